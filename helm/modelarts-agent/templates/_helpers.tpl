{{/* Names ------------------------------------------------------------------------------------ */}}

{{- define "modelarts-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or just <release> when it already contains the chart name. */}}
{{- define "modelarts-agent.fullname" -}}
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

{{- define "modelarts-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelarts-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "modelarts-agent.leaseName" -}}
{{- default (printf "%s-controller" (include "modelarts-agent.fullname" .)) .Values.controller.leaseName }}
{{- end }}

{{- define "modelarts-agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret that ModelArtsServices reference by default ("" when there is none). */}}
{{- define "modelarts-agent.credentialsSecretName" -}}
{{- $c := .Values.credentials }}
{{- if $c.existingSecret }}
{{- $c.existingSecret }}
{{- else if or $c.password $c.ak $c.sk $c.token }}
{{- printf "%s-credentials" (include "modelarts-agent.fullname" .) }}
{{- end }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------------- */}}

{{- define "modelarts-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "modelarts-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelarts-agent
{{- end }}

{{- define "modelarts-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelarts-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "modelarts-agent.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "modelarts-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* Checks that a schema cannot express ------------------------------------------------------- */}}

{{- define "modelarts-agent.validate" -}}
{{- $c := .Values.credentials }}
{{- if and $c.existingSecret (or $c.domain $c.user $c.password $c.ak $c.sk $c.token) }}
{{- fail "credentials: set either existingSecret or the credential values (domain/user/password, ak/sk or token), not both" }}
{{- end }}
{{- if and $c.password (not (and $c.domain $c.user)) }}
{{- fail "credentials: a password needs domain and user too" }}
{{- end }}
{{- if ne (empty $c.ak) (empty $c.sk) }}
{{- fail "credentials: set ak and sk together" }}
{{- end }}
{{- end }}

{{/* PodDisruptionBudget spec: maxUnavailable when given, else minAvailable. */}}
{{- define "modelarts-agent.pdbSpec" -}}
{{- if hasKey . "maxUnavailable" }}
maxUnavailable: {{ .maxUnavailable }}
{{- else }}
minAvailable: {{ .minAvailable | default 1 }}
{{- end }}
{{- end }}

{{/* Gateway ---------------------------------------------------------------------------------- */}}

{{/* The Services the gateway follows: modelArtsServices in the release namespace, then gateway.services. */}}
{{- define "modelarts-agent.gatewayServices" -}}
{{- $names := list }}
{{- range .Values.modelArtsServices }}
{{- $item := mergeOverwrite (deepCopy ($.Values.serviceDefaults | default dict)) (deepCopy .) }}
{{- if eq (default $.Release.Namespace $item.namespace) $.Release.Namespace }}
{{- $names = append $names $item.name }}
{{- end }}
{{- end }}
{{- range .Values.gateway.services }}
{{- $names = append $names . }}
{{- end }}
{{- toYaml (uniq $names) }}
{{- end }}

{{/* The gateway agent's config file (`modelarts-agent sidecar --config`). */}}
{{- define "modelarts-agent.gatewayConfig" -}}
{{- $gw := .Values.gateway -}}
# The gateway agent (`modelarts-agent sidecar`): the Kubernetes Services (= ModelArtsServices)
# to follow in {{ .Release.Namespace }}, xDS on loopback for this pod's Envoy, no Envoy files.
services:
  {{- range (include "modelarts-agent.gatewayServices" . | fromYamlArray) }}
  - name: {{ . }}
  {{- end }}
{{- with $gw.allowedCIDRs }}
discovery:
  allowed_cidrs: {{ toJson . }}
{{- end }}
envoy:
  files: false
  admin_port: {{ $gw.adminPort }}
xds:
  enabled: true
  address: 127.0.0.1
  port: {{ $gw.xdsPort }}
gateway:
  listen_port: {{ $gw.listenPort }}
  route_by_host: {{ $gw.routeByHost }}
  route_by_path: {{ $gw.routeByPath }}
admin:
  # MODELARTS_AGENT__ADMIN__ADDRESS (the pod IP) overrides this in the pod.
  address: 0.0.0.0
  port: {{ $gw.agentAdminPort }}
{{- end }}
