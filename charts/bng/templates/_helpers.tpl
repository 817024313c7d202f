{{/* Names: "bng" for a release named bng (or bng-*), otherwise "<release>-bng". */}}
{{- define "bng.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "bng.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "bng.selector" (list . "agent") */}}
{{- define "bng.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ $.Chart.Name }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "bng.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* nodeLabel "key=value" as a nodeSelector map (YAML). */}}
{{- define "bng.nodeSelector" -}}
{{- $kv := splitn "=" 2 .Values.nodeLabel -}}
{{- $sel := dict $kv._0 ($kv._1 | default "") -}}
{{- toYaml (merge $sel .Values.agent.nodeSelector) -}}
{{- end -}}
