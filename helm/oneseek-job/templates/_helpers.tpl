{{/*
Chart name. Kubernetes names are DNS labels: at most 63 characters, so every name here is
cut with trunc 63 and a trailing "-" left by the cut is removed.
*/}}
{{- define "oneseek-job.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name "<release>-<chart>" (or the release name alone when it already contains the chart
name), cut to 63 characters.
*/}}
{{- define "oneseek-job.fullname" -}}
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

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "oneseek-job.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: only the immutable name and instance. */}}
{{- define "oneseek-job.selectorLabels" -}}
app.kubernetes.io/name: {{ include "oneseek-job.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels on every object. */}}
{{- define "oneseek-job.labels" -}}
helm.sh/chart: {{ include "oneseek-job.chart" . }}
{{ include "oneseek-job.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: oneseek
{{- end }}

{{/* ServiceAccount the pods run as. */}}
{{- define "oneseek-job.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "oneseek-job.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: repository:tag, or repository@digest when a digest pins it. */}}
{{- define "oneseek-job.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* BASE_MODELS as the admin UI writes it: comma-separated. */}}
{{- define "oneseek-job.baseModels" -}}
{{- join "," .Values.baseModels }}
{{- end }}

{{/*
Number of Job indices: one per model in indexed mode, one pod in sequential mode.
*/}}
{{- define "oneseek-job.completions" -}}
{{- if eq .Values.mode "indexed" }}{{ len .Values.baseModels }}{{ else }}1{{ end }}
{{- end }}

{{/*
Hash of what the training produces: models, data, code (image), hyper-parameters and the
release identity. It names the run, so retries, all indices and an unchanged upgrade share
one RUN_ID, and a changed input gets a new one.
*/}}
{{- define "oneseek-job.runHash" -}}
{{- $inputs := dict
  "release" .Release.Name
  "namespace" .Release.Namespace
  "baseModels" .Values.baseModels
  "dataset" .Values.dataset
  "models" (pick .Values.models "existingClaim" "subPath")
  "image" (pick .Values.image "repository" "tag" "digest")
  "appVersion" .Chart.AppVersion
  "artifacts" .Values.artifacts.uri
  "modelVersion" .Values.modelVersion
  "training" .Values.training
  "extraArgs" .Values.extraArgs
  "runNonce" .Values.runNonce
-}}
{{- toJson $inputs | sha256sum }}
{{- end }}

{{/* RUN_ID: the fixed runId, else "run-" and 12 hex digits of the run hash. */}}
{{- define "oneseek-job.runId" -}}
{{- if .Values.runId }}
{{- .Values.runId }}
{{- else }}
{{- printf "run-%s" (include "oneseek-job.runHash" . | trunc 12) }}
{{- end }}
{{- end }}

{{/*
Hash of everything the Job spec is made from (all values but the test pod's, the chart
version and the release). A Job's pod template is immutable, so any change must get a new
Job name; equal values give the same name, so an unchanged upgrade or sync is a no-op.
*/}}
{{- define "oneseek-job.configHash" -}}
{{- $inputs := dict
  "values" (omit .Values "test" "argocd")
  "chart" .Chart.Version
  "release" .Release.Name
  "namespace" .Release.Namespace
-}}
{{- toJson $inputs | sha256sum | trunc 10 }}
{{- end }}

{{/*
Job name "<fullname>-<config hash>". Pods of an Indexed Job are named
"<job>-<index>-<5 random>" and their hostnames "<job>-<index>", both DNS labels, so the
prefix is cut to 40 characters to leave room for 10 hash digits and the index.
*/}}
{{- define "oneseek-job.jobName" -}}
{{- printf "%s-%s" (include "oneseek-job.fullname" . | trunc 40 | trimSuffix "-") (include "oneseek-job.configHash" .) }}
{{- end }}

{{/* The ConfigMap snapshot of BASE_MODELS this Job reads (immutable; named like the Job). */}}
{{- define "oneseek-job.configMapName" -}}
{{- include "oneseek-job.jobName" . }}
{{- end }}

{{- define "oneseek-job.modelsClaim" -}}
{{- .Values.models.existingClaim | default (printf "%s-models" (include "oneseek-job.fullname" . | trunc 56 | trimSuffix "-")) }}
{{- end }}

{{- define "oneseek-job.checkpointsClaim" -}}
{{- .Values.checkpoints.existingClaim | default (printf "%s-checkpoints" (include "oneseek-job.fullname" . | trunc 51 | trimSuffix "-")) }}
{{- end }}

{{/*
Hyper-parameters as ONESEEK_* env vars; a null value emits nothing, so the CLI default holds.
*/}}
{{- define "oneseek-job.trainingEnv" -}}
{{- $t := .Values.training }}
{{- $pairs := list
  (list "ONESEEK_LORA_R" $t.lora.r)
  (list "ONESEEK_LORA_ALPHA" $t.lora.alpha)
  (list "ONESEEK_LORA_DROPOUT" $t.lora.dropout)
  (list "ONESEEK_LORA_TARGET_MODULES" (join "," ($t.lora.targetModules | default list)))
  (list "ONESEEK_LEARNING_RATE" $t.learningRate)
  (list "ONESEEK_EPOCHS" $t.epochs)
  (list "ONESEEK_MAX_STEPS" $t.maxSteps)
  (list "ONESEEK_SEQ_LEN" $t.seqLen)
  (list "ONESEEK_BATCH_TOKENS" $t.batchTokens)
  (list "ONESEEK_SEED" $t.seed)
  (list "ONESEEK_GRADIENT_CHECKPOINTING" $t.gradientCheckpointing)
  (list "ONESEEK_CHECKPOINT_EVERY" $t.checkpointEvery)
}}
{{- range $pairs }}
{{- $value := index . 1 }}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
- name: {{ index . 0 }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Env shared by the training pods and the helm test pod: where the artifacts live. */}}
{{- define "oneseek-job.storageEnv" -}}
- name: ARTIFACTS_URI
  value: {{ .Values.artifacts.uri | quote }}
{{- with .Values.artifacts.s3EndpointUrl }}
- name: S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.artifacts.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.artifacts.credentialsSecret }}
{{- if .name }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- end }}
