{{/* Full name of the release's objects. */}}
{{- define "flashsale.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "flashsale.labels" -}}
app.kubernetes.io/name: flashsale
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "flashsale.selectorLabels" -}}
app.kubernetes.io/name: flashsale
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "flashsale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "flashsale.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "flashsale.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "flashsale.backendsSecret" -}}
{{- default (printf "%s-backends" (include "flashsale.fullname" .)) .Values.backends.existingSecret -}}
{{- end -}}

{{/* The rules the operator needs on the namespaces it watches. */}}
{{- define "flashsale.rules" -}}
- apiGroups: ["flashsale.io"]
  resources: ["flashsales"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["flashsale.io"]
  resources: ["flashsales/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["flashsale.io"]
  resources: ["flashsales/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  # get: a sale's own Secret (spec.backends); create and patch: the Secret
  # <sale>-backends that hands the operator's URLs to a sale's pods.
  verbs: ["get", "create", "patch"]
{{- if .Values.networkPolicy.sales.enabled }}
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch"]
{{- end }}
{{- end -}}
