{{/* The release's resource name: <release>-voxline, or the release name if it says voxline. */}}
{{- define "voxline.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries; app.kubernetes.io/name is the `job` label Prometheus sees. */}}
{{- define "voxline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "voxline.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* KEDA's lag threshold: what one replica finishes in the accepted drain time. */}}
{{- define "voxline.lagThreshold" -}}
{{- mul .Values.autoscaling.recordsPerSecondPerReplica .Values.autoscaling.targetDrainSeconds -}}
{{- end -}}
