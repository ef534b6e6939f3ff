"""Commit signature verification with real keys: SSH (ssh-keygen) and GPG."""

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from aioreconcile.adapters.git import GitCache, GitSource, VerificationError
from aioreconcile.engine.config import CommitVerification, DataRef, GitSourceSpec, VerifyMode
from tests.git.conftest import Upstream, git_commands

MakeUpstream = Callable[[str], Upstream]


def ssh_key(directory: Path, name: str) -> Path:
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key


def allowed_signers(path: Path, *keys: Path) -> Path:
    lines = [f"ada@example.com {key.with_suffix('.pub').read_text().strip()}" for key in keys]
    path.write_text("\n".join(lines) + "\n")
    return path


def ssh_signing(key: Path) -> tuple[str, ...]:
    return ("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}")


def verified_source(cache: GitCache, url: str, verify: CommitVerification) -> GitSource:
    return cache.source(GitSourceSpec(url=url, verify=verify))


@pytest.fixture
def ssh_keys(tmp_path: Path) -> tuple[Path, Path]:
    keys = tmp_path / "keys"
    keys.mkdir()
    return ssh_key(keys, "trusted"), ssh_key(keys, "stranger")


def ssh_verified_source(cache: GitCache, daemon: str, trusted: Path) -> GitSource:
    """The served ``app`` repository, verified against an allowed-signers file naming only
    ``trusted``."""
    signers = allowed_signers(trusted.parent / "allowed", trusted)
    return verified_source(
        cache,
        daemon + "app.git",
        CommitVerification(mode=VerifyMode.SSH, allowed_signers_file=str(signers)),
    )


async def test_ssh_signed_commit_verifies(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache, ssh_keys: tuple[Path, Path]
) -> None:
    trusted, _ = ssh_keys
    sha = upstream("app").commit({"a.txt": "a\n"}, sign=ssh_signing(trusted))
    src = ssh_verified_source(cache, git_daemon, trusted)
    await src.fetch(sha)
    await src.verify(sha)


async def test_unsigned_commit_fails_ssh_verification(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache, ssh_keys: tuple[Path, Path]
) -> None:
    trusted, _ = ssh_keys
    sha = upstream("app").commit({"a.txt": "a\n"})
    src = ssh_verified_source(cache, git_daemon, trusted)
    with pytest.raises(VerificationError, match=f"commit {sha} .* is not signed"):
        await src.verify(sha)


async def test_commit_by_an_unknown_ssh_signer_fails_verification(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache, ssh_keys: tuple[Path, Path]
) -> None:
    trusted, stranger = ssh_keys
    sha = upstream("app").commit({"a.txt": "a\n"}, sign=ssh_signing(stranger))
    src = ssh_verified_source(cache, git_daemon, trusted)
    await src.fetch(sha)
    with pytest.raises(VerificationError, match="failed ssh signature verification") as e:
        await src.verify(sha)
    assert sha in str(e.value)


# --- GPG ----------------------------------------------------------------------------------------


def gpg(home: Path, *args: str) -> bytes:
    return subprocess.run(
        ["gpg", "--batch", "--quiet", "--homedir", str(home), *args],
        check=True,
        capture_output=True,
    ).stdout


@pytest.fixture
def gpg_homes() -> Iterator[tuple[Path, Path]]:
    """Two throwaway keyrings, each with one secret key, in short paths (gpg-agent's socket
    path has a length limit)."""
    homes = []
    for name in ("trusted", "stranger"):
        home = Path(tempfile.mkdtemp(prefix="gpg-", dir="/tmp"))
        gpg(home, "--passphrase", "", "--quick-gen-key", f"{name} <ada@example.com>", "ed25519")
        homes.append(home)
    try:
        yield homes[0], homes[1]
    finally:
        for home in homes:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
            shutil.rmtree(home, ignore_errors=True)


def gpg_signing(home: Path) -> tuple[tuple[str, ...], dict[str, str]]:
    return ("-c", "gpg.format=openpgp", "-c", "user.signingkey=ada@example.com"), {
        "GNUPGHOME": str(home)
    }


@pytest.mark.parametrize("signer", ["trusted", "stranger"])
async def test_gpg_signed_commit_verifies_only_with_its_key(
    upstream: MakeUpstream,
    git_daemon: str,
    cache: GitCache,
    gpg_homes: tuple[Path, Path],
    tmp_path: Path,
    signer: str,
) -> None:
    trusted, stranger = gpg_homes
    sign, env = gpg_signing(trusted if signer == "trusted" else stranger)
    sha = upstream("app").commit({"a.txt": "a\n"}, sign=sign, env=env)
    keyring = tmp_path / "keyring.asc"
    keyring.write_bytes(gpg(trusted, "--armor", "--export"))
    src = verified_source(
        cache,
        git_daemon + "app.git",
        CommitVerification(mode=VerifyMode.GPG, keyring_file=str(keyring)),
    )
    await src.fetch(sha)
    if signer == "trusted":
        await src.verify(sha)
    else:
        with pytest.raises(VerificationError, match="failed gpg signature verification"):
            await src.verify(sha)


KEYS = DataRef("ConfigMap", "team", "release-keys")


class KeysByReference:
    """A Secret's or ConfigMap's data, as the Kubernetes adapter reads it at each use."""

    def __init__(self, data: dict[str, bytes] | None) -> None:
        self.data = data
        self.reads = 0

    async def __call__(self, ref: DataRef) -> Mapping[str, bytes] | None:
        assert ref == KEYS
        self.reads += 1
        return self.data


def referenced_source(
    cache: GitCache, url: str, mode: VerifyMode, keys: KeysByReference
) -> GitSource:
    verify = CommitVerification(mode=mode, keys=KEYS)
    return cache.source(GitSourceSpec(url=url, verify=verify), data=keys)


async def test_ssh_allowed_signers_by_reference_are_read_at_each_verification(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache, ssh_keys: tuple[Path, Path]
) -> None:
    trusted, stranger = ssh_keys
    sha = upstream("app").commit({"a.txt": "a\n"}, sign=ssh_signing(trusted))
    only_stranger = allowed_signers(stranger.parent / "s", stranger).read_bytes()
    keys = KeysByReference({"allowed_signers": only_stranger})
    src = referenced_source(cache, git_daemon + "app.git", VerifyMode.SSH, keys)
    await src.fetch(sha)
    with pytest.raises(VerificationError):
        await src.verify(sha)
    keys.data = {"allowed_signers": allowed_signers(trusted.parent / "t", trusted).read_bytes()}
    await src.verify(sha)  # the rotated keys, without a new source
    assert keys.reads == 2


async def test_gpg_keys_by_reference_one_armored_key_per_data_key(
    upstream: MakeUpstream, git_daemon: str, cache: GitCache, gpg_homes: tuple[Path, Path]
) -> None:
    trusted, stranger = gpg_homes
    sign, env = gpg_signing(trusted)
    sha = upstream("app").commit({"a.txt": "a\n"}, sign=sign, env=env)
    keys = KeysByReference(
        {
            "a-stranger.asc": gpg(stranger, "--armor", "--export"),
            "b-trusted.asc": gpg(trusted, "--armor", "--export"),
        }
    )
    src = referenced_source(cache, git_daemon + "app.git", VerifyMode.GPG, keys)
    await src.fetch(sha)
    await src.verify(sha)  # found among several keys


@pytest.mark.parametrize("data", [None, {}, {"other": b"x"}])
async def test_missing_keys_by_reference_fail_verification_naming_the_object(
    upstream: MakeUpstream,
    git_daemon: str,
    cache: GitCache,
    ssh_keys: tuple[Path, Path],
    data: dict[str, bytes] | None,
) -> None:
    trusted, _ = ssh_keys
    sha = upstream("app").commit({"a.txt": "a\n"}, sign=ssh_signing(trusted))
    src = referenced_source(cache, git_daemon + "app.git", VerifyMode.SSH, KeysByReference(data))
    await src.fetch(sha)
    with pytest.raises(VerificationError, match="ConfigMap team/release-keys"):
        await src.verify(sha)


async def test_a_signed_head_just_fetched_is_verified_without_a_presence_check(
    upstream: MakeUpstream,
    git_daemon: str,
    cache: GitCache,
    spawned: list[tuple[str, ...]],
    ssh_keys: tuple[Path, Path],
) -> None:
    """The head ``fetch()`` brought is known to be present: verification reads its header
    and runs ``verify-commit``, without a ``cat-file -e`` first; it still refuses a stranger."""
    trusted, stranger = ssh_keys
    repo = upstream("app")
    signed = repo.commit({"a.txt": "a\n"}, sign=ssh_signing(trusted))
    src = ssh_verified_source(cache, git_daemon, trusted)
    assert await src.fetch() == signed
    spawned.clear()

    await src.verify(signed)

    assert git_commands(spawned) == ["cat-file", "verify-commit"]
    foreign = repo.commit({"a.txt": "b\n"}, sign=ssh_signing(stranger))
    assert await src.fetch() == foreign
    with pytest.raises(VerificationError, match="failed ssh signature verification"):
        await src.verify(foreign)
