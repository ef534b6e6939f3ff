{{- define "aioreconcile.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aioreconcile.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "aioreconcile.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aioreconcile.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aioreconcile.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "aioreconcile.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "aioreconcile.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aioreconcile.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aioreconcile.inventoryNamespace" -}}
{{- default .Release.Namespace .Values.controller.inventoryNamespace }}
{{- end }}

{{/* The leader election Lease's name. */}}
{{- define "aioreconcile.leaseName" -}}
{{- default (include "aioreconcile.fullname" .) .Values.leaderElection.id }}
{{- end }}

{{/* namespaced RBAC: the release namespace, the inventory namespace, the watched namespace
(CRD mode) and rbac.namespaces. */}}
{{- define "aioreconcile.rbacNamespaces" -}}
{{- $all := list .Release.Namespace (include "aioreconcile.inventoryNamespace" .) }}
{{- with .Values.watchNamespace }}{{ $all = append $all . }}{{ end }}
{{- range .Values.rbac.namespaces }}{{ $all = append $all . }}{{ end }}
{{- $all | uniq | toJson }}
{{- end }}

{{/* File mode when `config` is set; CRD mode (no --config) otherwise. */}}
{{- define "aioreconcile.fileMode" -}}
{{- if .Values.config }}true{{ end }}
{{- end }}

{{/* Rules of the controller's own work, wherever it acts: the CRDs and their status, events. */}}
{{- define "aioreconcile.controllerRules" -}}
# patch on syncs: the leader's finalizer, and every replica's record of a webhook it received
# (requestedAt and the hinted revision on the Sync, docs/crds.md "Receiver"): standbys need it too.
- apiGroups: ["aioreconcile.dev"]
  resources: ["syncs", "receivers"]
  verbs: ["get", "list", "watch", "update", "patch"]
- apiGroups: ["aioreconcile.dev"]
  resources: ["syncs/status", "receivers/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: ["aioreconcile.dev"]
  resources: ["syncs/finalizers", "receivers/finalizers"]
  verbs: ["update"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if not (include "aioreconcile.fileMode" .) }}
# CRD mode reads the Secrets and ConfigMaps a Sync or Receiver references (credentials, keys,
# webhook tokens); file mode gets its secrets as mounted files instead. It keeps each Sync's
# inventory ConfigMap beside the Sync (docs/crds.md, "RBAC in CRD mode"), whatever applyRules say.
- apiGroups: [""]
  resources: ["secrets", "configmaps"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "update", "patch", "delete"]
{{- end }}
{{- end }}

{{/* Rules in the inventory namespace: the file mode's inventory ConfigMaps. */}}
{{- define "aioreconcile.ownRules" -}}
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end }}

{{/* Refusals: values that would be parsed and ignored, or an RBAC the controller cannot work
with. */}}
{{- define "aioreconcile.validate" -}}
{{- if and .Values.watchNamespace (include "aioreconcile.fileMode" .) }}
{{- fail "watchNamespace is for CRD mode (no `config`); file mode's syncs are in `config`" }}
{{- end }}
{{- if and (eq .Values.rbac.scope "namespaced") (not (include "aioreconcile.fileMode" .)) (not .Values.watchNamespace) }}
{{- fail "rbac.scope namespaced in CRD mode needs watchNamespace: the Syncs of every namespace cannot be watched with Roles" }}
{{- end }}
{{- end }}
