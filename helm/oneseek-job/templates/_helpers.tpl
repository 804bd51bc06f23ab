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
Hash of what the training produces: models, data, code (image), hyper-parameters,
MODEL_VERSION, where it is published and the release identity. It names both the run and
the Job, so retries, all indices and an unchanged upgrade share one RUN_ID and one Job, a
changed input gets a new Job and a new RUN_ID, and everything else (parallelism, TTL,
deadline, annotations) patches the existing Job in place.
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
  "runId" .Values.runId
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
The Job's identity: the run hash plus the mode (completionMode cannot change on a Job).
*/}}
{{- define "oneseek-job.jobHash" -}}
{{- if gt (.Values.nodesPerModel | int) 1 }}
{{- /* A JobSet's replicated jobs are immutable: another group shape is another JobSet (the
  same run, which resumes its checkpoints with the new number of processes). */}}
{{- printf "%s/%s/nodes=%d/gpus=%d" (include "oneseek-job.runHash" .) .Values.mode (.Values.nodesPerModel | int) (include "oneseek-job.procsPerNode" . | int) | sha256sum | trunc 10 }}
{{- else }}
{{- printf "%s/%s" (include "oneseek-job.runHash" .) .Values.mode | sha256sum | trunc 10 }}
{{- end }}
{{- end }}

{{/* torchrun processes per node of a multi-node group: one per GPU of the pod. */}}
{{- define "oneseek-job.procsPerNode" -}}
{{- if .Values.gpu.enabled }}{{ .Values.gpu.count | int }}{{ else }}1{{ end }}
{{- end }}

{{/*
The batch Jobs whose pods train, as a JSON list (kube.py annotates its own Job): the Indexed
Job, or with nodesPerModel > 1 the JobSet's child Jobs "<jobset>-m<i>-0".
*/}}
{{- define "oneseek-job.trainingJobNames" -}}
{{- $jobName := include "oneseek-job.jobName" . }}
{{- if gt (.Values.nodesPerModel | int) 1 }}
{{- $names := list }}
{{- range $i, $_ := .Values.baseModels }}
{{- $names = append $names (printf "%s-m%d-0" $jobName $i) }}
{{- end }}
{{- toJson $names }}
{{- else }}
{{- toJson (list $jobName) }}
{{- end }}
{{- end }}

{{/*
Job name "<fullname>-<job hash>". Pods of an Indexed Job are named
"<job>-<index>-<5 random>" and their hostnames "<job>-<index>", both DNS labels, so the
prefix is cut to 40 characters to leave room for 10 hash digits and the index.
*/}}
{{- define "oneseek-job.jobName" -}}
{{- printf "%s-%s" (include "oneseek-job.fullname" . | trunc 40 | trimSuffix "-") (include "oneseek-job.jobHash" .) }}
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
{{- /* optional: a missing Secret is reported by the job's pre-flight (exit 2, naming it)
  instead of leaving the pod in CreateContainerConfigError until the deadline. */}}
- name: ONESEEK_CREDENTIALS_SECRET
  value: {{ .name | quote }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .accessKeyIdKey }}
      optional: true
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .secretAccessKeyKey }}
      optional: true
{{- end }}
{{- end }}
{{- end }}

{{/*
Model names as the job's discovery normalizes them (lower-case, every run of
non-alphanumerics one "-", no leading or trailing "-"), so two spellings of one model are
caught at render time; discovery refuses them again at run time.
*/}}
{{- define "oneseek-job.checkModelAliases" -}}
{{- $seen := dict }}
{{- range .Values.baseModels }}
{{- $key := regexReplaceAll "[^a-z0-9]+" (lower .) "-" | trimAll "-" }}
{{- if hasKey $seen $key }}
{{- fail (printf "baseModels: %q and %q name the same model %q; list each model once" (get $seen $key) . $key) }}
{{- end }}
{{- $_ := set $seen $key . }}
{{- end }}
{{- end }}

{{/*
Resources with limits equal to requests (Guaranteed QoS): a missing CPU or memory limit is
filled from its request, a different one is refused. The GPU limit comes from `gpu`.
*/}}
{{- define "oneseek-job.resources" -}}
{{- $requests := .Values.resources.requests | default dict }}
{{- $limits := deepCopy (.Values.resources.limits | default dict) }}
{{- range $name := list "cpu" "memory" }}
{{- if not (hasKey $requests $name) }}
{{- fail (printf "resources.requests.%s is required (Guaranteed QoS needs CPU and memory requests equal to limits)" $name) }}
{{- end }}
{{- $request := get $requests $name | toString }}
{{- if and (hasKey $limits $name) (ne (get $limits $name | toString) $request) }}
{{- fail (printf "resources.limits.%s (%v) must equal resources.requests.%s (%s): requests below limits make the pod Burstable, evicted first under node pressure" $name (get $limits $name) $name $request) }}
{{- end }}
{{- $_ := set $limits $name (get $requests $name) }}
{{- end }}
{{- if .Values.gpu.enabled }}
{{- $_ := set $limits .Values.gpu.resourceName (.Values.gpu.count | int) }}
{{- end }}
{{- toYaml (dict "requests" $requests "limits" $limits) }}
{{- end }}

{{/*
A created PVC needs an explicit StorageClass and access modes: the cluster default is often
a ReadWriteOnce block volume (gp3, pd-balanced, Azure Disk) that parallel pods on several
nodes cannot share, and an access mode the class cannot serve leaves the claim Pending.
*/}}
{{- define "oneseek-job.checkClaim" -}}
{{- $what := index . 0 }}
{{- $v := index . 1 }}
{{- if not $v.existingClaim }}
{{- if or (not $v.storageClassName) (not $v.accessModes) }}
{{- fail (printf "%s: set %s.existingClaim, or %s.storageClassName and %s.accessModes for the chart to create the claim" $what $what $what $what) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The required node affinity of the pods: the user's `affinity` with the GPU product
expression added to every required node selector term (terms are ORed, expressions ANDed).
*/}}
{{- define "oneseek-job.affinity" -}}
{{- $affinity := deepCopy (.Values.affinity | default dict) }}
{{- if and .Values.gpu.enabled .Values.gpu.product.values }}
{{- $expression := dict "key" .Values.gpu.product.labelKey "operator" "In" "values" .Values.gpu.product.values }}
{{- $node := get $affinity "nodeAffinity" | default dict }}
{{- $required := get $node "requiredDuringSchedulingIgnoredDuringExecution" | default dict }}
{{- $terms := get $required "nodeSelectorTerms" | default (list (dict)) }}
{{- $merged := list }}
{{- range $terms }}
{{- $term := deepCopy . }}
{{- $_ := set $term "matchExpressions" (append (get $term "matchExpressions" | default list) $expression) }}
{{- $merged = append $merged $term }}
{{- end }}
{{- $_ := set $required "nodeSelectorTerms" $merged }}
{{- $_ := set $node "requiredDuringSchedulingIgnoredDuringExecution" $required }}
{{- $_ := set $affinity "nodeAffinity" $node }}
{{- end }}
{{- with $affinity }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
The pod spec of `oneseek-job verify` on this release's run: the helm test pod and the
Argo CD PostSync Job. Runs as the job's ServiceAccount (IRSA / workload identity give it
the same S3 access), accepts an unsigned run only when signing is off.
*/}}
{{- define "oneseek-job.verifyPodSpec" -}}
restartPolicy: Never
serviceAccountName: {{ include "oneseek-job.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
containers:
  - name: verify
    image: {{ include "oneseek-job.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args:
      - verify
      - {{ .Values.artifacts.uri | quote }}
      - --run-id
      - {{ include "oneseek-job.runId" . | quote }}
      {{- if .Values.signing.publicKey }}
      - --public-key
      - /etc/oneseek/verify/public-key.pem
      {{- end }}
      {{- if not .Values.signing.enabled }}
      - --allow-unsigned
      {{- end }}
    env:
      {{- include "oneseek-job.storageEnv" . | nindent 6 }}
    resources:
      {{- toYaml .Values.test.resources | nindent 6 }}
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      {{- if .Values.signing.publicKey }}
      - name: verify-key
        mountPath: /etc/oneseek/verify
        readOnly: true
      {{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: 1Gi
  {{- if .Values.signing.publicKey }}
  - name: verify-key
    configMap:
      name: {{ include "oneseek-job.verifyKeyName" . }}
  {{- end }}
{{- end }}

{{/* ConfigMap with the public half of the signing key, for verify. */}}
{{- define "oneseek-job.verifyKeyName" -}}
{{- printf "%s-verify-key" (include "oneseek-job.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{/*
The training pod template (metadata and spec) shared by the Indexed Job and every
replicated job of the JobSet. Arguments: root (the chart context), jobName (the batch Job
the pod belongs to, for kube.py), runId, groupEnv (env entries of a multi-node group, as
YAML; empty for the Job).
*/}}
{{- define "oneseek-job.podTemplate" -}}
{{- $root := .root }}
metadata:
  labels:
    {{- include "oneseek-job.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: training
    {{- with $root.Values.job.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    oneseek.ai/run-id: {{ $.runId | quote }}
    {{- if and $root.Values.metrics.enabled (eq $root.Values.metrics.discovery "annotations") }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $root.Values.metrics.port | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with $root.Values.job.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "oneseek-job.serviceAccountName" $root }}
  # kube.py posts Events and annotates the Job with this token (see the Role).
  automountServiceAccountToken: true
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $root.Values.job.terminationGracePeriodSeconds }}
  {{- with $root.Values.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  {{- with $root.Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- $nodeSelector := $root.Values.nodeSelector }}
  {{- if $root.Values.gpu.enabled }}
  {{- $nodeSelector = merge (deepCopy $root.Values.nodeSelector) $root.Values.gpu.nodeSelector }}
  {{- end }}
  {{- with $nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $tolerations := $root.Values.tolerations }}
  {{- if $root.Values.gpu.enabled }}
  {{- $tolerations = concat $root.Values.gpu.tolerations $root.Values.tolerations }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with include "oneseek-job.affinity" $root | trim }}
  affinity:
    {{- . | nindent 4 }}
  {{- end }}
  containers:
    - name: train
      image: {{ include "oneseek-job.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      {{- if $root.Values.metrics.enabled }}
      ports:
        - name: metrics
          containerPort: {{ $root.Values.metrics.port }}
          protocol: TCP
      {{- end }}
      args:
        - train
        {{- if $root.Values.training.allowRegression }}
        - --allow-regression
        {{- end }}
        {{- range $root.Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        # An immutable snapshot named like the Job: every index and retry sees one list.
        - name: BASE_MODELS
          valueFrom:
            configMapKeyRef:
              name: {{ include "oneseek-job.configMapName" $root }}
              key: BASE_MODELS
        # The number of models this Job was rendered for: a pod whose BASE_MODELS has
        # another count exits 4 (FailJob) instead of training the wrong index.
        - name: ONESEEK_MODEL_COUNT
          value: {{ len $root.Values.baseModels | quote }}
        - name: MODELS_DIR
          value: {{ $root.Values.models.mountPath | quote }}
        - name: DATASET
          value: {{ $root.Values.dataset | quote }}
        {{- include "oneseek-job.storageEnv" $root | nindent 8 }}
        - name: RUN_ID
          value: {{ $.runId | quote }}
        - name: MODEL_VERSION
          value: {{ $root.Values.modelVersion | quote }}
        - name: CHECKPOINT_DIR
          value: /checkpoints
        - name: ONESEEK_WORK_DIR
          value: /work
        {{- if $root.Values.artifacts.createBucket }}
        - name: ONESEEK_CREATE_BUCKET
          value: "true"
        {{- end }}
        {{- if $root.Values.signing.enabled }}
        - name: ONESEEK_SIGNING_KEY_FILE
          value: /etc/oneseek/signing/{{ $root.Values.signing.secretKey }}
        {{- end }}
        {{- with $root.Values.image.digest }}
        - name: ONESEEK_IMAGE_DIGEST
          value: {{ . | quote }}
        {{- end }}
        {{- if $root.Values.metrics.enabled }}
        - name: ONESEEK_METRICS_PORT
          value: {{ $root.Values.metrics.port | quote }}
        {{- end }}
        {{- if $root.Values.gpu.enabled }}
        # Pre-flight requires CUDA with this many devices (exit 2 naming the driver).
        - name: ONESEEK_GPU_COUNT
          value: {{ $root.Values.gpu.count | quote }}
        {{- end }}
        # Who we are, for kube.py's Events and Job annotations.
        - name: ONESEEK_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: ONESEEK_POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: ONESEEK_JOB_NAME
          value: {{ $.jobName | quote }}
        - name: ONESEEK_JOB_UID
          valueFrom:
            fieldRef:
              fieldPath: metadata.labels['batch.kubernetes.io/controller-uid']
        {{- with $.groupEnv }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with include "oneseek-job.trainingEnv" $root | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $root.Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      resources:
        {{- include "oneseek-job.resources" $root | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: models
          mountPath: {{ $root.Values.models.mountPath }}
          readOnly: true
          {{- with $root.Values.models.subPath }}
          subPath: {{ . }}
          {{- end }}
        - name: checkpoints
          mountPath: /checkpoints
        - name: work
          mountPath: /work
        - name: cache
          mountPath: /cache
        - name: tmp
          mountPath: /tmp
        - name: dshm
          mountPath: /dev/shm
        {{- if $root.Values.signing.enabled }}
        - name: signing-key
          mountPath: /etc/oneseek/signing
          readOnly: true
        {{- end }}
  volumes:
    - name: models
      persistentVolumeClaim:
        claimName: {{ include "oneseek-job.modelsClaim" $root }}
        readOnly: true
    - name: checkpoints
      {{- if $root.Values.checkpoints.persistence }}
      persistentVolumeClaim:
        claimName: {{ include "oneseek-job.checkpointsClaim" $root }}
      {{- else }}
      emptyDir:
        sizeLimit: {{ $root.Values.checkpoints.sizeLimit }}
      {{- end }}
    - name: work
      emptyDir:
        sizeLimit: {{ $root.Values.scratch.workSizeLimit }}
    - name: cache
      emptyDir:
        sizeLimit: {{ $root.Values.scratch.cacheSizeLimit }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ $root.Values.scratch.tmpSizeLimit }}
    # The container runtime's default /dev/shm is 64 MiB, too small for data loaders.
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $root.Values.scratch.shmSizeLimit }}
    {{- if $root.Values.signing.enabled }}
    # optional: a missing Secret is reported by the job's pre-flight (exit 2, naming it)
    # instead of leaving the pod in ContainerCreating until the deadline.
    - name: signing-key
      secret:
        secretName: {{ $root.Values.signing.secretName }}
        optional: true
        defaultMode: 0440
        items:
          - key: {{ $root.Values.signing.secretKey }}
            path: {{ $root.Values.signing.secretKey }}
    {{- end }}
{{- end }}

{{/*
Metadata of the training workload (the Job, or the JobSet): name, Kueue labels, run
annotations.
*/}}
{{- define "oneseek-job.workloadMetadata" -}}
name: {{ include "oneseek-job.jobName" . }}
namespace: {{ .Release.Namespace }}
labels:
  {{- include "oneseek-job.labels" . | nindent 2 }}
  app.kubernetes.io/component: training
  {{- with .Values.kueue.queueName }}
  # Kueue suspends the Job until its ClusterQueue admits all pods at once (never partial
  # admission: no kueue.x-k8s.io/job-min-parallelism).
  kueue.x-k8s.io/queue-name: {{ . | quote }}
  {{- end }}
  {{- with .Values.kueue.priorityClass }}
  kueue.x-k8s.io/priority-class: {{ . | quote }}
  {{- end }}
annotations:
  oneseek.ai/run-id: {{ include "oneseek-job.runId" . | quote }}
  oneseek.ai/base-models: {{ include "oneseek-job.baseModels" . | quote }}
  oneseek.ai/job-hash: {{ include "oneseek-job.jobHash" . | quote }}
  {{- if .Values.argocd.syncHook }}
  argocd.argoproj.io/hook: Sync
  argocd.argoproj.io/hook-delete-policy: BeforeHookCreation
  {{- end }}
  {{- with .Values.job.annotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
The training Job's podFailurePolicy. Argument: dict with verdictAction, what exit 2 / 3 do
(FailIndex: that model fails; FailJob: the whole Job fails).
*/}}
{{- define "oneseek-job.podFailurePolicy" -}}
# Keyed on the exit codes of oneseek_job/errors.py. First matching rule wins, so the
# verdicts of the job itself come before the disruption rule: a pod that exits 2 while
# being drained still fails instead of retrying.
podFailurePolicy:
  rules:
    # 4 = the Job does not match its model list (ONESEEK_MODEL_COUNT): every index would
    # fail the same way, so the whole Job fails at once.
    - action: FailJob
      onExitCodes:
        containerName: train
        operator: In
        values: [4]
    # 2 = bad configuration or input, 3 = model resolution failed: a retry cannot help.
    - action: {{ .verdictAction }}
      onExitCodes:
        containerName: train
        operator: In
        values: [2, 3]
    # Preemption, node drain, API eviction: not the job's fault, retry without counting.
    # Guaranteed QoS (requests = limits) keeps node-pressure evictions rare, and
    # activeDeadlineSeconds bounds a pod that is disrupted again and again.
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
    # 75 = stopped after saving a checkpoint: retry (counted) and resume.
    - action: Count
      onExitCodes:
        containerName: train
        operator: In
        values: [75]
{{- end }}
