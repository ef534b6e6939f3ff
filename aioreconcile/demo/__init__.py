"""``aioreconcile demo``: the product on an embedded default (a composition concern, beside the
runtime and the test harness: it wires real components, never fakes).

``running`` starts everything and stops it; ``touring`` is the ``--script`` tour; ``events``
reads the controller's log; ``viewing`` prints it; ``gitserving`` is the Git side (server, clone,
hook); ``building`` shows the first build; ``sample`` is the app.
"""
