{{/*
Names, labels and the pieces every salesfc pod shares. Every name and label in the chart comes from here.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "salesfc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name (at most 63 characters): "<release>-<chart>", or the release name alone when it already
contains the chart name, or fullnameOverride.
*/}}
{{- define "salesfc.fullname" -}}
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

{{/*
"<fullname>-<suffix>" in at most `max` characters: the full name is cut, never the suffix.
Usage: include "salesfc.componentName" (list . "postgresql" 52)
*/}}
{{- define "salesfc.componentName" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $max := index . 2 }}
{{- $prefix := include "salesfc.fullname" $root | trunc (int (sub $max (add1 (len $suffix)))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix $suffix }}
{{- end }}

{{/* Chart name and version for the helm.sh/chart label. */}}
{{- define "salesfc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "salesfc.labels" -}}
helm.sh/chart: {{ include "salesfc.chart" . }}
{{ include "salesfc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: salesfc
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: the release's pods, all components. */}}
{{- define "salesfc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "salesfc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of a resource that belongs to one component (postgresql, prep, trainer, infer, test).
Usage: include "salesfc.componentLabels" (list . "prep")
*/}}
{{- define "salesfc.componentLabels" -}}
{{ include "salesfc.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Selector labels of one component's pods. Usage: include "salesfc.componentSelectorLabels" (list . "postgresql") */}}
{{- define "salesfc.componentSelectorLabels" -}}
{{ include "salesfc.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* The ServiceAccount the release's pods run as. */}}
{{- define "salesfc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "salesfc.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The launch hook's own ServiceAccount (the only one with API rights). */}}
{{- define "salesfc.launch.serviceAccountName" -}}
{{- include "salesfc.componentName" (list . "launch" 63) }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; the tag defaults to the second argument. */}}
{{- define "salesfc.imageRef" -}}
{{- $image := index . 0 }}
{{- $tag := default (index . 1) $image.tag | toString }}
{{- if eq $tag "latest" }}
{{- fail (printf "image tag 'latest' is not allowed for %s: pin a version (or a digest)" $image.repository) }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s:%s@%s" $image.repository $tag $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository $tag }}
{{- end }}
{{- end }}

{{/* The salesfc image. */}}
{{- define "salesfc.image" -}}
{{- include "salesfc.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{/* The shared volume's claim. */}}
{{- define "salesfc.sharedClaimName" -}}
{{- default (include "salesfc.componentName" (list . "shared" 63)) .Values.sharedStorage.existingClaim }}
{{- end }}

{{/* The in-cluster PostgreSQL StatefulSet and Service name (<= 52 so pod and revision labels stay <= 63). */}}
{{- define "salesfc.postgresql.fullname" -}}
{{- include "salesfc.componentName" (list . "postgresql" 52) }}
{{- end }}

{{/* PostgreSQL connection facts, in-cluster or external. */}}
{{- define "salesfc.postgresql.host" -}}
{{- if .Values.postgresql.external.enabled }}{{ .Values.postgresql.external.host }}{{ else }}{{ include "salesfc.postgresql.fullname" . }}{{ end }}
{{- end }}

{{- define "salesfc.postgresql.port" -}}
{{- if .Values.postgresql.external.enabled }}{{ .Values.postgresql.external.port | int }}{{ else }}5432{{ end }}
{{- end }}

{{- define "salesfc.postgresql.database" -}}
{{- if .Values.postgresql.external.enabled }}{{ .Values.postgresql.external.database }}{{ else }}{{ .Values.postgresql.database }}{{ end }}
{{- end }}

{{- define "salesfc.postgresql.user" -}}
{{- if .Values.postgresql.external.enabled }}{{ .Values.postgresql.external.user }}{{ else }}{{ .Values.postgresql.user }}{{ end }}
{{- end }}

{{/* The in-cluster server's arguments with TLS (tests/integration/test_database_tls.py starts a real server with
them, its files mounted as the kubelet mounts the Secret). */}}
{{- define "salesfc.postgresql.tlsArgs" -}}
- postgres
- -c
- ssl=on
- -c
- ssl_cert_file=/etc/postgresql-tls/tls.crt
- -c
- ssl_key_file=/etc/postgresql-tls/tls.key
{{- end }}

{{- define "salesfc.postgresql.sslmode" -}}
{{- if .Values.postgresql.external.enabled }}{{ .Values.postgresql.external.sslmode }}{{ else }}{{ .Values.postgresql.sslmode }}{{ end }}
{{- end }}

{{/* The Secret holding the password: the user's, or the generated one. */}}
{{- define "salesfc.postgresql.secretName" -}}
{{- if .Values.postgresql.external.enabled }}
{{- .Values.postgresql.external.existingSecret }}
{{- else }}
{{- default (include "salesfc.postgresql.fullname" .) .Values.postgresql.auth.existingSecret }}
{{- end }}
{{- end }}

{{- define "salesfc.postgresql.secretKey" -}}
{{- if .Values.postgresql.external.enabled }}{{ .Values.postgresql.external.secretKey }}{{ else }}{{ .Values.postgresql.auth.secretKey }}{{ end }}
{{- end }}

{{/* Whether the chart generates the password Secret. */}}
{{- define "salesfc.postgresql.createSecret" -}}
{{- if and (not .Values.postgresql.external.enabled) (not .Values.postgresql.auth.existingSecret) }}true{{ end }}
{{- end }}

{{/* Whether the chart runs a Spark standalone cluster for the Spark offline store ("true" or empty). */}}
{{- define "salesfc.spark.cluster" -}}
{{- if and (eq .Values.featureStore.offlineStore "spark") .Values.featureStore.spark.cluster.enabled }}true{{ end }}
{{- end }}

{{/* The Spark master's Deployment and Service. */}}
{{- define "salesfc.spark.masterName" -}}
{{- include "salesfc.componentName" (list . "spark-master" 52) }}
{{- end }}

{{/* Spark's ports. The master listens on 7077 and a worker on 7078; a reading pod's driver on 7078 and its block
manager on 7079; executors' block managers from 7079 on (Spark moves up one port per executor on a worker, so the
range leaves room for 16). Fixed ports, so that NetworkPolicies can name them. */}}
{{- define "salesfc.spark.masterPort" }}7077{{ end }}
{{- define "salesfc.spark.lastPort" }}7095{{ end }}

{{/* The Spark settings of the offline store and of the materialization engine (one set for both). */}}
{{- define "salesfc.spark.conf" -}}
{{- $spark := .Values.featureStore.spark }}
{{- $conf := dict
  "spark.master" "${SALESFC_SPARK_MASTER}"
  "spark.sql.session.timeZone" "UTC"
  "spark.sql.execution.arrow.pyspark.enabled" "true"
  "spark.ui.enabled" "false"
  "spark.ui.showConsoleProgress" "false"
  "spark.driver.memory" $spark.driverMemory
}}
{{- if include "salesfc.spark.cluster" . }}
{{- $_ := set $conf "spark.driver.host" "${SALESFC_SPARK_DRIVER_HOST}" }}
{{- $_ := set $conf "spark.driver.bindAddress" "0.0.0.0" }}
{{- $_ := set $conf "spark.driver.port" "7078" }}
{{- $_ := set $conf "spark.driver.blockManager.port" "7079" }}
{{- $_ := set $conf "spark.blockManager.port" "7079" }}
{{- $_ := set $conf "spark.port.maxRetries" "16" }}
{{- $_ := set $conf "spark.executor.cores" ($spark.workers.cores | toString) }}
{{- $_ := set $conf "spark.executor.memory" $spark.workers.memory }}
{{- end }}
{{- toYaml (merge (deepCopy $spark.conf) $conf) }}
{{- end }}

{{/* The components whose pods open PostgreSQL (a JSON list): the salesfc pods, and the Spark workers, whose
executors write the online rows when prep materializes through Spark. */}}
{{- define "salesfc.postgresql.clients" -}}
{{- $clients := list "prep" "trainer" "infer" "serve" "test" }}
{{- if include "salesfc.spark.cluster" . }}{{ $clients = append $clients "spark-worker" }}{{ end }}
{{- toJson $clients }}
{{- end }}

{{/* The feature_store.yaml ConfigMap. */}}
{{- define "salesfc.featureStore.configMapName" -}}
{{- include "salesfc.componentName" (list . "feature-store" 63) }}
{{- end }}

{{/*
Environment of every pod that opens the feature store: where the work lives, which feature_store.yaml, and the
PostgreSQL settings its ${SALESFC_PG_*} placeholders are filled from. The password comes from the Secret only.
*/}}
{{- define "salesfc.storeEnv" -}}
- name: SALESFC_WORKDIR
  value: /shared
- name: SALESFC_FEATURE_STORE
  value: /etc/salesfc/feature_store.yaml
- name: SALESFC_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: SALESFC_PG_HOST
  value: {{ include "salesfc.postgresql.host" . | quote }}
- name: SALESFC_PG_PORT
  value: {{ include "salesfc.postgresql.port" . | quote }}
- name: SALESFC_PG_DATABASE
  value: {{ include "salesfc.postgresql.database" . | quote }}
- name: SALESFC_PG_USER
  value: {{ include "salesfc.postgresql.user" . | quote }}
- name: SALESFC_PG_SSLMODE
  value: {{ include "salesfc.postgresql.sslmode" . | quote }}
{{- if include "salesfc.postgresql.caSecret" . }}
# libpq's own variable: every connection (salesfc's, Feast's) verifies the server with this CA.
- name: PGSSLROOTCERT
  value: /etc/salesfc-db-ca/ca.crt
{{- else if and .Values.postgresql.external.enabled .Values.postgresql.external.systemRoots }}
- name: PGSSLROOTCERT
  value: system
{{- end }}
- name: SALESFC_PG_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "salesfc.postgresql.secretName" . }}
      key: {{ include "salesfc.postgresql.secretKey" . }}
{{- if eq .Values.featureStore.offlineStore "spark" }}
- name: SALESFC_SPARK_MASTER
  value: {{ ternary (printf "spark://%s:%s" (include "salesfc.spark.masterName" .) (include "salesfc.spark.masterPort" .)) "local[*]" (eq (include "salesfc.spark.cluster" .) "true") | quote }}
# The address the Spark executors call this pod's driver back on (spark.driver.host).
- name: SALESFC_SPARK_DRIVER_HOST
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end }}
{{- end }}

{{/*
OMP_NUM_THREADS from the container's own CPU limit (the Downward API rounds up; without a limit, the node's
allocatable CPUs): os.cpu_count() is the host's, and torch's and every other OpenMP pool would start one thread per
host core, oversubscribing a limited container. For prep, inference and the check; the trainer's processes read
the limit from their cgroup and share it (salesfc.cpus): the API server accepts no divisor but 1 and 1m for CPU.
*/}}
{{- define "salesfc.threadsEnv" -}}
- name: OMP_NUM_THREADS
  valueFrom:
    resourceFieldRef:
      resource: limits.cpu
      divisor: "1"
{{- end }}

{{/* Volumes of every salesfc pod: the shared claim and the feature store configuration. */}}
{{- define "salesfc.volumes" -}}
- name: shared
  persistentVolumeClaim:
    claimName: {{ include "salesfc.sharedClaimName" . }}
- name: feature-store
  configMap:
    name: {{ include "salesfc.featureStore.configMapName" . }}
    items:
      - key: feature_store.yaml
        path: feature_store.yaml
{{- with include "salesfc.postgresql.caSecret" . }}
- name: db-ca
  secret:
    secretName: {{ . }}
    items:
      - key: {{ include "salesfc.postgresql.caSecretKey" $ }}
        path: ca.crt
{{- end }}
{{- end }}

{{/* The Secret holding the CA that verifies the server, when there is one (empty otherwise): the external
server's caSecret, or the in-cluster server's own TLS Secret (its ca.crt). */}}
{{- define "salesfc.postgresql.caSecret" -}}
{{- if .Values.postgresql.external.enabled }}{{ .Values.postgresql.external.caSecret }}
{{- else if .Values.postgresql.tls.enabled }}{{ .Values.postgresql.tls.existingSecret }}{{ end }}
{{- end }}

{{- define "salesfc.postgresql.caSecretKey" -}}
{{- if .Values.postgresql.external.enabled }}{{ .Values.postgresql.external.caSecretKey }}{{ else }}ca.crt{{ end }}
{{- end }}

{{- define "salesfc.volumeMounts" -}}
- name: shared
  mountPath: /shared
- name: feature-store
  mountPath: /etc/salesfc
  readOnly: true
{{- if include "salesfc.postgresql.caSecret" . }}
- name: db-ca
  mountPath: /etc/salesfc-db-ca
  readOnly: true
{{- end }}
{{- end }}

{{/* Pod-level settings every salesfc pod shares (prep, infer, test; the trainer adds its own scheduling). */}}
{{- define "salesfc.podCommon" -}}
serviceAccountName: {{ include "salesfc.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Scheduling of the prep, inference and test pods. */}}
{{- define "salesfc.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Checksum of the feature store configuration, so pods that read it change when it does. */}}
{{- define "salesfc.featureStore.checksum" -}}
{{- include (print $.Template.BasePath "/configmap-feature-store.yaml") . | sha256sum }}
{{- end }}

{{/* ---------------------------------------------------------------- training ---------------------------------- */}}

{{/*
The training runtime's name. A ClusterTrainingRuntime is cluster-scoped, so its name carries the namespace too
(two releases of the same name in two namespaces must not share one). It ends in a hash of the spec fields the CRD
makes immutable (spec.template.spec.failurePolicy: the API server refuses the patch), so changing them makes a new
runtime, and a new TrainJob (its runtimeRef is immutable too); every other runtime change is patched in place and
keeps the TrainJob. (Replacing the runtime in place is no way out: Trainer v2.1 keeps a runtime in use from being
deleted.) Cut to 63 with a hash of the rest when longer.
*/}}
{{- define "salesfc.runtimeName" -}}
{{- $base := include "salesfc.componentName" (list . "trainer" 54) }}
{{- if eq .Values.training.runtime.kind "ClusterTrainingRuntime" }}
{{- $base = printf "%s-%s" (include "salesfc.fullname" .) .Release.Namespace }}
{{- if gt (len $base) 54 }}
{{- $base = printf "%s-%s" ($base | trunc 45 | trimSuffix "-") ($base | sha256sum | trunc 8) }}
{{- end }}
{{- end }}
{{- printf "%s-%s" $base (include "salesfc.training.runtimeImmutable" . | sha256sum | trunc 8) }}
{{- end }}

{{/* nvidia.com/gpu added to requests and limits when the profile asks for GPUs. */}}
{{- define "salesfc.training.resources" -}}
{{- $resources := deepCopy .Values.training.resources }}
{{- if gt (int .Values.training.gpusPerNode) 0 }}
{{- $gpus := int .Values.training.gpusPerNode }}
{{- $_ := set $resources "requests" (merge (dict "nvidia.com/gpu" $gpus) (default (dict) $resources.requests)) }}
{{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" $gpus) (default (dict) $resources.limits)) }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/*
The TrainJob's spec.trainer. `runId` is the TrainJob's own name (SALESFC_RUN_ID), so inference and helm test wait
for exactly this model. The name hash is computed over this block with an empty runId.
Usage: include "salesfc.training.trainer" (dict "root" . "runId" $name)
*/}}
{{- define "salesfc.training.trainer" -}}
{{- $root := .root }}
{{- $t := $root.Values.training -}}
image: {{ include "salesfc.image" $root }}
command:
  - torchrun
args:
  - -m
  - salesfc
  - train
numNodes: {{ $t.numNodes | int }}
numProcPerNode: {{ $t.numProcPerNode | int }}
resourcesPerNode:
  {{- include "salesfc.training.resources" $root | nindent 2 }}
env:
  - name: SALESFC_RUN_ID
    value: {{ .runId | quote }}
  - name: SALESFC_DATA_ID
    value: {{ include "salesfc.dataId" $root | quote }}
  - name: SALESFC_EPOCHS
    value: {{ $t.epochs | int64 | quote }}
  - name: SALESFC_BATCH_SIZE
    value: {{ $t.batchSize | int64 | quote }}
  - name: SALESFC_ROWS_PER_READ
    value: {{ $t.rowsPerRead | int64 | quote }}
  - name: SALESFC_LR
    value: {{ $t.lr | toString | quote }}
  - name: SALESFC_WEIGHT_DECAY
    value: {{ $t.weightDecay | toString | quote }}
  - name: SALESFC_HIDDEN
    value: {{ $t.hidden | join "," | quote }}
  - name: SALESFC_DROPOUT
    value: {{ $t.dropout | toString | quote }}
  - name: SALESFC_EMBED_DIM
    value: {{ $t.embedDim | int64 | quote }}
  - name: SALESFC_HORIZON
    value: {{ $t.horizon | int64 | quote }}
  - name: SALESFC_QUANTILES
    value: {{ $t.quantiles | join "," | quote }}
  - name: SALESFC_PATIENCE
    value: {{ $t.patience | int64 | quote }}
  - name: SALESFC_GRAD_CLIP
    value: {{ $t.gradClip | toString | quote }}
  - name: SALESFC_SEED
    value: {{ $t.seed | int64 | quote }}
  - name: SALESFC_VAL_WEEKS
    value: {{ $t.valWeeks | int64 | quote }}
  - name: SALESFC_REFIT
    value: {{ $t.refit | quote }}
  - name: SALESFC_TEST_WEEKS
    value: {{ $t.testWeeks | int64 | quote }}
  - name: SALESFC_DEVICE
    value: {{ $t.device | quote }}
  - name: SALESFC_AMP
    value: {{ $t.amp | quote }}
  - name: SALESFC_WAIT_TIMEOUT
    value: {{ $t.waitTimeout | toString | quote }}
{{- end }}

{{/*
The id of the data this release prepares (SALESFC_DATA_ID): prep records it in data/prep.json, and training and
inference wait until the prepared data carries it. The launch hook creates the chart's TrainJob only after prep's
hook, but inference (a Job of the release) and TrainJobs sent with `salesfc submit` can start before it: this keeps
them from using the data of the release before.
*/}}
{{- define "salesfc.dataId" -}}
{{- printf "data-%s" (toJson (dict "data" .Values.data "offlineStore" .Values.featureStore.offlineStore) | sha256sum | trunc 12) }}
{{- end }}

{{/*
The training hash: 8 hex characters over everything a TrainJob is made of (its spec.trainer without the run id,
the runtime it names) and the data it trains on. `trainer` and `runtimeRef` are immutable, so any change to them
must be a new TrainJob: a changed hash is a new name, hence a new TrainJob (a retrain); the same values keep it.
*/}}
{{- define "salesfc.training.hash" -}}
{{- $inputs := dict
    "trainer" (include "salesfc.training.trainer" (dict "root" . "runId" ""))
    "runtime" (list .Values.training.runtime.kind (include "salesfc.runtimeName" .))
    "data" .Values.data
    "offlineStore" .Values.featureStore.offlineStore }}
{{- toJson $inputs | sha256sum | trunc 8 }}
{{- end }}

{{/*
The TrainJob's name, which is also the model's run id: an RFC 1035 label of at most 47 characters. The Trainer
names its JobSet after the TrainJob, and JobSet rejects a name whose pods "<name>-node-0-<index>-<5 random>" would
pass 63 characters (47 leaves room for up to 99 nodes).
*/}}
{{- define "salesfc.trainJobName" -}}
{{- include "salesfc.componentName" (list . (printf "train-%s" (include "salesfc.training.hash" .)) 47) }}
{{- end }}

{{/* The ConfigMap holding the TrainJob (and owning it once the launch hook has created it). */}}
{{- define "salesfc.trainJobConfigMapName" -}}
{{- include "salesfc.componentName" (list . "trainjob" 63) }}
{{- end }}

{{/* The release's TrainJob, as the launch hook creates it. */}}
{{- define "salesfc.trainJob" -}}
{{- $name := include "salesfc.trainJobName" . -}}
apiVersion: trainer.kubeflow.org/v1alpha1
kind: TrainJob
metadata:
  # "<fullname>-train-<hash>": the hash covers spec.trainer, the runtime and the data values. trainer and
  # runtimeRef are immutable, so an upgrade that changes them creates a new TrainJob (a retrain) and the launch hook
  # deletes the old one; an upgrade that changes nothing here keeps this TrainJob and its model.
  name: {{ $name }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "salesfc.componentLabels" (list . "trainer") | nindent 4 }}
spec:
  runtimeRef:
    apiGroup: trainer.kubeflow.org
    kind: {{ .Values.training.runtime.kind }}
    name: {{ include "salesfc.runtimeName" . }}
  trainer:
    {{- include "salesfc.training.trainer" (dict "root" . "runId" $name) | nindent 4 }}
{{- end }}

{{/* The inference Job's pod template (its name hashes it: a Job's pod template is immutable). */}}
{{- define "salesfc.inference.podTemplate" -}}
metadata:
  labels:
    {{- include "salesfc.componentLabels" (list . "infer") | nindent 4 }}
  annotations:
    checksum/feature-store: {{ include "salesfc.featureStore.checksum" . }}
spec:
  {{- include "salesfc.podCommon" . | nindent 2 }}
  restartPolicy: Never
  {{- with include "salesfc.scheduling" . }}{{ . | nindent 2 }}{{ end }}
  containers:
    - name: infer
      image: {{ include "salesfc.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command:
        - salesfc
        - infer
      env:
        {{- include "salesfc.storeEnv" . | nindent 8 }}
        {{- include "salesfc.threadsEnv" . | nindent 8 }}
        - name: SALESFC_RUN_ID
          value: {{ include "salesfc.trainJobName" . | quote }}
        - name: SALESFC_DATA_ID
          value: {{ include "salesfc.dataId" . | quote }}
        - name: SALESFC_WAIT_TIMEOUT
          value: {{ .Values.inference.waitTimeout | toString | quote }}
        - name: SALESFC_PLOT_SERIES
          value: {{ .Values.inference.plotSeries | int64 | quote }}
      volumeMounts:
        {{- include "salesfc.volumeMounts" . | nindent 8 }}
      securityContext:
        {{- toYaml .Values.containerSecurityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.inference.resources | nindent 8 }}
  volumes:
    {{- include "salesfc.volumes" . | nindent 4 }}
{{- end }}

{{/*
The inference Job's name: "<fullname>-infer-<hash of its pod template>". The pod template carries the TrainJob's
name, so a retrain is a new inference Job too; the same values keep the same Job (it does not run again).
*/}}
{{- define "salesfc.inferenceJobName" -}}
{{- $hash := include "salesfc.inference.podTemplate" . | sha256sum | trunc 8 }}
{{- include "salesfc.componentName" (list . (printf "infer-%s" $hash) 63) }}
{{- end }}

{{/* The forecast service's Deployment, Service, budget and autoscaler. */}}
{{- define "salesfc.serve.fullname" -}}
{{- include "salesfc.componentName" (list . "serve" 63) }}
{{- end }}

{{/* Values the schema cannot express; fail with a message naming the value. */}}
{{- define "salesfc.validate" -}}
{{- $t := .Values.training }}
{{- if not (regexMatch "^[a-z]" (include "salesfc.fullname" .)) }}
{{- fail (printf "the release's full name %q must start with a letter: the TrainJob name is an RFC 1035 label (use another release name or fullnameOverride)" (include "salesfc.fullname" .)) }}
{{- end }}
{{- if and (gt (int $t.gpusPerNode) 0) (ne (int $t.numProcPerNode) (int $t.gpusPerNode)) }}
{{- fail (printf "training.numProcPerNode (%d) must equal training.gpusPerNode (%d): one training process per GPU" (int $t.numProcPerNode) (int $t.gpusPerNode)) }}
{{- end }}
{{- if and (eq $t.device "cuda") (eq (int $t.gpusPerNode) 0) }}
{{- fail "training.device is cuda but training.gpusPerNode is 0: request GPUs or use device cpu/auto" }}
{{- end }}
{{- if and (eq $t.device "cpu") (gt (int $t.gpusPerNode) 0) }}
{{- fail (printf "training.device is cpu but training.gpusPerNode is %d: the GPUs would sit idle; use device cuda or auto" (int $t.gpusPerNode)) }}
{{- end }}
{{- if and (not .Values.sharedStorage.existingClaim) (eq .Values.sharedStorage.accessMode "ReadWriteOnce") (gt (int $t.numNodes) 1) }}
{{- fail (printf "sharedStorage.accessMode ReadWriteOnce cannot serve training.numNodes %d: a ReadWriteOnce volume attaches to one node, so the other trainer nodes never start. Use ReadWriteMany (a class that supports it, e.g. NFS or CephFS) or training.numNodes 1 (see \"Shared storage\" in the chart README)" (int $t.numNodes)) }}
{{- end }}
{{- $pg := .Values.postgresql }}
{{- if not $pg.external.enabled }}
{{- if and $pg.tls.enabled (not $pg.tls.existingSecret) }}
{{- fail "postgresql.tls.enabled needs postgresql.tls.existingSecret: a Secret with tls.crt, tls.key and ca.crt whose certificate names the in-cluster server's Service (see \"TLS for the in-cluster PostgreSQL\" in the chart README)" }}
{{- end }}
{{- if and $pg.tls.enabled (has $pg.sslmode (list "disable" "allow" "prefer")) }}
{{- fail (printf "postgresql.tls.enabled serves TLS, but postgresql.sslmode %s lets salesfc connect without it or without checking the server: set postgresql.sslmode: verify-full" $pg.sslmode) }}
{{- end }}
{{- if and (not $pg.tls.enabled) (has $pg.sslmode (list "require" "verify-ca" "verify-full")) }}
{{- fail (printf "postgresql.sslmode %s needs TLS, which the in-cluster server serves only with postgresql.tls.enabled (and postgresql.tls.existingSecret): enable it, or set postgresql.sslmode: disable" $pg.sslmode) }}
{{- end }}
{{- end }}
{{- if .Values.postgresql.external.enabled }}
{{- if not .Values.postgresql.external.host }}
{{- fail "postgresql.external.enabled is true but postgresql.external.host is empty" }}
{{- end }}
{{- if and (has .Values.postgresql.external.sslmode (list "verify-ca" "verify-full")) (not .Values.postgresql.external.caSecret) (not .Values.postgresql.external.systemRoots) }}
{{- fail (printf "postgresql.external.sslmode %s verifies the server's certificate against a CA, but none is given, so no connection can succeed: put the CA certificate in a Secret and name it in postgresql.external.caSecret (key postgresql.external.caSecretKey), or set postgresql.external.systemRoots: true for a certificate from a public CA" .Values.postgresql.external.sslmode) }}
{{- end }}
{{- if not .Values.postgresql.external.existingSecret }}
{{- fail "postgresql.external.enabled is true but postgresql.external.existingSecret is empty: create a Secret with the password and name it here" }}
{{- end }}
{{- end }}
{{- end }}
