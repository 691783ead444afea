{{/* Names, labels and the pieces shared by every Ray cluster spec. */}}

{{- define "raysys.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object-name prefix: the release name when it already contains the chart name. */}}
{{- define "raysys.fullname" -}}
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

{{/* Labels of every object; call with (dict "root" $ "component" "mlflow"). */}}
{{- define "raysys.labels" -}}
app.kubernetes.io/name: {{ include "raysys.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: raysys
{{- if .root.Values.helmLabels }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}
{{- end }}

{{/* Selector labels; call with (dict "root" $ "component" "mlflow"). */}}
{{- define "raysys.selectorLabels" -}}
app.kubernetes.io/name: {{ include "raysys.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "raysys.rayServiceAccountName" -}}
{{ include "raysys.fullname" . }}-ray
{{- end }}

{{- define "raysys.sharedClaimName" -}}
{{ .Values.sharedStorage.existingClaim | default (printf "%s-shared" (include "raysys.fullname" .)) }}
{{- end }}

{{/* MLflow tracking URI seen by the Ray pods. */}}
{{- define "raysys.trackingUri" -}}
{{- if .Values.mlflow.trackingUri }}
{{- .Values.mlflow.trackingUri }}
{{- else }}
{{- printf "http://%s.%s.svc:%v" .Values.mlflow.name .Release.Namespace .Values.mlflow.port }}
{{- end }}
{{- end }}

{{/* The CPU image: repository@digest when image.digest is set, else repository:tag. */}}
{{- define "raysys.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}
{{- end }}

{{/* The GPU image: repository@gpuDigest when image.gpuDigest is set, else repository:gpuTag. */}}
{{- define "raysys.gpuImage" -}}
{{- if .Values.image.gpuDigest -}}
{{ .Values.image.repository }}@{{ .Values.image.gpuDigest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.gpuTag }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the Ray token (key "auth_token"). */}}
{{- define "raysys.rayTokenSecretName" -}}
{{ .Values.rayAuth.existingSecret | default (printf "%s-ray-token" (include "raysys.fullname" .)) }}
{{- end }}

{{/* Name of the Secret holding MLflow's admin credentials (keys username, password, flask-secret-key). */}}
{{- define "raysys.mlflowAuthSecretName" -}}
{{ .Values.mlflow.auth.existingSecret | default (printf "%s-mlflow-auth" (include "raysys.fullname" .)) }}
{{- end }}

{{/* "true" when MLflow clients get credentials: auth on, and a server this chart runs or an existing Secret. */}}
{{- define "raysys.mlflowClientAuth" -}}
{{- if and .Values.mlflow.auth.enabled (or .Values.mlflow.enabled .Values.mlflow.auth.existingSecret) }}true{{ end }}
{{- end }}

{{/* MLFLOW_TRACKING_USERNAME / _PASSWORD from the MLflow auth Secret (env entries, no "env:" key). */}}
{{- define "raysys.mlflowClientEnv" -}}
# MLflow basic-auth credentials (read by the mlflow client), from the Secret; never in runtime_env.
- name: MLFLOW_TRACKING_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "raysys.mlflowAuthSecretName" . }}
      key: username
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "raysys.mlflowAuthSecretName" . }}
      key: password
{{- end }}

{{/*
A random secret value that survives upgrades: the value already stored under .key in the Secret
.name (found with `lookup` on install/upgrade), else a new random string. `helm template` and
manifests/ cannot look up, so they get a new value each time (manifests/ uses existing Secrets).
Call with (dict "root" $ "name" "<secret>" "key" "<key>" "length" 48).
*/}}
{{- define "raysys.stableRandom" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{ index $existing.data .key | b64dec }}
{{- else -}}
{{ randAlphaNum (int .length) }}
{{- end }}
{{- end }}

{{/* Where `python jobs/<name>.py` lives inside the image (Dockerfile: APP_DIR). */}}
{{- define "raysys.jobsDir" -}}
/home/ray/raysys/jobs
{{- end }}

{{/* The data set of one RayJob; call with (dict "root" $ "job" "raysys-train"). */}}
{{- define "raysys.dataPath" -}}
{{ .root.Values.sharedStorage.mountPath }}/data/{{ .job }}
{{- end }}

{{/* `python jobs/generate.py ...`: the data set a RayJob trains on; call like raysys.dataPath. */}}
{{- define "raysys.generateCommand" -}}
python {{ include "raysys.jobsDir" .root }}/generate.py --profile {{ .root.Values.data.profile }} --rows {{ .root.Values.data.rows }} --seed {{ .root.Values.data.seed }} --out {{ include "raysys.dataPath" . }} --overwrite
{{- end }}

{{/* Pod-level security context of every pod: the image's non-root "ray" user. */}}
{{- define "raysys.podSecurityContext" -}}
# The image's "ray" user (uid 1000, group users/100); fsGroup makes volumes writable.
securityContext:
  runAsNonRoot: true
  runAsUser: 1000
  runAsGroup: 100
  fsGroup: 100
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{/* Container-level security context of every container (Pod Security "restricted"). */}}
{{- define "raysys.containerSecurityContext" -}}
# No privilege escalation, no Linux capabilities, the image's files read-only
# (writable paths are emptyDirs: see securityContext in values.yaml).
securityContext:
  runAsNonRoot: true
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: {{ .Values.securityContext.readOnlyRootFilesystem }}
  capabilities:
    drop: ["ALL"]
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{- define "raysys.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets -}}
# Registry credentials.
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Env of every Ray container; call with (dict "root" $ "serve" true) in the RayService's cluster. */}}
{{- define "raysys.rayEnv" -}}
{{- $root := .root -}}
env:
  # Every job logs to MLflow here (read by mlflow and raysys).
  - name: MLFLOW_TRACKING_URI
    value: {{ include "raysys.trackingUri" $root | quote }}
  {{- if include "raysys.mlflowClientAuth" $root }}
  {{- include "raysys.mlflowClientEnv" $root | nindent 2 }}
  {{- end }}
  # matplotlib's config and cache in the writable cache emptyDir (the image's files are read-only).
  - name: MPLCONFIGDIR
    value: /home/ray/.cache/matplotlib
  {{- if .serve }}
  # Serve's ingress on port 8000: HAProxy forwarding straight to the replicas ("1") or the Python proxy ("0").
  - name: RAY_SERVE_ENABLE_HA_PROXY
    value: {{ ternary "1" "0" (eq $root.Values.rayService.ingress "haproxy") | quote }}
  # Serve's throughput-optimized request path in the replicas ("1") or the default one ("0").
  - name: RAY_SERVE_THROUGHPUT_OPTIMIZED
    value: {{ ternary "1" "0" $root.Values.rayService.throughputOptimized | quote }}
  # HAProxy's retry-on for every Serve backend (space-separated keywords; "none": never retry).
  - name: RAY_SERVE_HAPROXY_RETRY_ON
    value: {{ $root.Values.rayService.retryOn | quote }}
  {{- end }}
{{- range $name, $value := $root.Values.objectStore.env }}
  # Object-store setting (objectStore.env).
  - name: {{ $name }}
    value: {{ $value | quote }}
{{- end }}
{{- if $root.Values.objectStore.gcsKeySecret }}
  # The GCS service-account key of objectStore.gcsKeySecret, mounted read-only.
  - name: GOOGLE_APPLICATION_CREDENTIALS
    value: /var/run/secrets/raysys/gcs/key.json
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . | indent 2 }}
{{- end }}
{{- with $root.Values.objectStore.credentialsSecret }}
# Object-store credentials: every key of the Secret becomes an environment variable.
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end }}

{{/* Mounts of the writable scratch emptyDirs (/tmp and ~/.cache) of every container; no "volumeMounts:" key. */}}
{{- define "raysys.scratchVolumeMounts" -}}
# Temporary files (Python's tempfile, torch, mlflow downloads).
- name: tmp
  mountPath: /tmp
# pip, torch and matplotlib caches (MPLCONFIGDIR=/home/ray/.cache/matplotlib).
- name: cache
  mountPath: /home/ray/.cache
{{- end }}

{{/* The scratch emptyDirs of every pod; no "volumes:" key. */}}
{{- define "raysys.scratchVolumes" -}}
# Writable scratch space on the node's disk, gone with the pod.
- name: tmp
  emptyDir: {}
- name: cache
  emptyDir: {}
{{- end }}

{{/* Volume mounts of every Ray container; call with (dict "root" $ "serve" true) in the RayService's cluster. */}}
{{- define "raysys.rayVolumeMounts" -}}
volumeMounts:
  # Ray's object store lives in shared memory.
  - name: shm
    mountPath: /dev/shm
  # Ray's session directory (logs, sockets, runtime_env files); KubeRay mounts the same
  # "ray-logs" volume into the autoscaler sidecar.
  - name: ray-logs
    mountPath: /tmp/ray
  {{- if .serve }}
  # Serve's HAProxy config, admin/metrics sockets and server state (RAY_SERVE_HAPROXY_*).
  - name: haproxy
    mountPath: /tmp/haproxy-serve
  {{- end }}
  {{- include "raysys.scratchVolumeMounts" .root | nindent 2 }}
{{- if .root.Values.sharedStorage.enabled }}
  # Data sets and Ray Train/Tune results, seen by every pod.
  - name: shared
    mountPath: {{ .root.Values.sharedStorage.mountPath }}
{{- end }}
{{- if .root.Values.objectStore.gcsKeySecret }}
  # The GCS service-account key (objectStore.gcsKeySecret).
  - name: gcs-key
    mountPath: /var/run/secrets/raysys/gcs
    readOnly: true
{{- end }}
{{- end }}

{{/* Volumes of every Ray pod; call with (dict "root" $ "shmSize" "2Gi" "serve" false). */}}
{{- define "raysys.rayVolumes" -}}
volumes:
  # Shared memory for the object store, in RAM up to sizeLimit.
  - name: shm
    emptyDir:
      medium: Memory
      sizeLimit: {{ .shmSize }}
  # Ray's /tmp/ray (the name KubeRay uses for it).
  - name: ray-logs
    emptyDir: {}
  {{- if .serve }}
  # HAProxy's /tmp/haproxy-serve.
  - name: haproxy
    emptyDir: {}
  {{- end }}
  {{- include "raysys.scratchVolumes" .root | nindent 2 }}
{{- if .root.Values.sharedStorage.enabled }}
  # The ReadWriteMany claim of shared-storage.yaml.
  - name: shared
    persistentVolumeClaim:
      claimName: {{ include "raysys.sharedClaimName" .root }}
{{- end }}
{{- with .root.Values.objectStore.gcsKeySecret }}
  # The GCS service-account key Secret, key.json only.
  - name: gcs-key
    secret:
      secretName: {{ . }}
      items:
        - key: key.json
          path: key.json
{{- end }}
{{- end }}

{{/* autoscalerOptions and enableInTreeAutoscaling of a RayCluster spec. */}}
{{- define "raysys.autoscaling" -}}
# Run the Ray autoscaler as a sidecar of the head; it scales the worker groups
# between minReplicas and maxReplicas as jobs ask for resources.
enableInTreeAutoscaling: {{ .Values.autoscaler.enabled }}
{{- if .Values.autoscaler.enabled }}
# Settings of the autoscaler sidecar.
autoscalerOptions:
  # Default | Aggressive | Conservative: how fast to add pods for pending work.
  upscalingMode: {{ .Values.autoscaler.upscalingMode }}
  # Seconds a worker pod must be idle before it is removed.
  idleTimeoutSeconds: {{ .Values.autoscaler.idleTimeoutSeconds }}
  # Autoscaler v2 is opt-in: add `version: v2` to use it.
  # Pull policy of the sidecar's image (the head's image).
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  # The sidecar's own resources.
  resources:
    requests:
      cpu: {{ .Values.autoscaler.cpu | quote }}
      memory: {{ .Values.autoscaler.memory }}
    limits:
      cpu: {{ .Values.autoscaler.cpu | quote }}
      memory: {{ .Values.autoscaler.memory }}
  {{- include "raysys.containerSecurityContext" . | nindent 2 }}
  # Writable /tmp and ~/.cache of the head pod (KubeRay adds /tmp/ray, the "ray-logs" volume).
  volumeMounts:
    {{- include "raysys.scratchVolumeMounts" . | nindent 4 }}
{{- end }}
{{- end }}

{{/* headGroupSpec; call with (dict "root" $ "serve" true) to expose the Serve port. */}}
{{- define "raysys.headGroupSpec" -}}
{{- $root := .root -}}
{{- $head := $root.Values.head -}}
# The Ray head pod: GCS, dashboard / Job API and the drivers of submitted jobs.
headGroupSpec:
  # Arguments of `ray start --head` (string values).
  rayStartParams:
    # No Ray tasks or actors on the head; job drivers still run here.
    num-cpus: "0"
    # Listen on all interfaces so the dashboard Service and port-forward reach it; who may connect
    # is limited by the token (rayAuth) and the NetworkPolicy (networkPolicy).
    dashboard-host: "0.0.0.0"
    {{- with $head.rayStartParams }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  # Pod template of the head.
  template:
    metadata:
      labels:
        {{- include "raysys.labels" (dict "root" $root "component" "ray-head") | nindent 8 }}
    spec:
      # Bound by the KubeRay operator to the autoscaler's Role (see rbac.yaml).
      serviceAccountName: {{ include "raysys.rayServiceAccountName" $root }}
      # Only the autoscaler sidecar calls the Kubernetes API: no token without it.
      automountServiceAccountToken: {{ $root.Values.autoscaler.enabled }}
      {{- if .serve }}
      {{- include "raysys.serveGracePeriod" . | nindent 6 }}
      {{- end }}
      {{- include "raysys.podSecurityContext" $root | nindent 6 }}
      {{- if $root.Values.image.pullSecrets }}
      {{- include "raysys.imagePullSecrets" $root | nindent 6 }}
      {{- end }}
      {{- with $head.nodeSelector }}
      # Where the head may run.
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $head.tolerations }}
      # Taints the head tolerates.
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        # The first container must be the Ray container.
        - name: ray-head
          # Tag <rayVersion>-py311-cpu, built from the repository's Dockerfile.
          image: {{ include "raysys.image" $root }}
          # IfNotPresent suits pinned tags (and images loaded into kind/minikube).
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          ports:
            # Global Control Store: workers join the cluster here.
            - name: gcs-server
              containerPort: 6379
            # Dashboard and Job Submission API (`ray job submit --address http://...:8265`).
            - name: dashboard
              containerPort: 8265
            # Ray Client (ray://...:10001).
            - name: client
              containerPort: 10001
            # Prometheus metrics.
            - name: metrics
              containerPort: 8080
            {{- if .serve }}
            # Ray Serve's ingress (the detector's REST endpoint).
            - name: serve
              containerPort: 8000
            {{- end }}
          {{- include "raysys.rayEnv" (dict "root" $root "serve" .serve) | nindent 10 }}
          # KubeRay recommends requests == limits for Ray pods.
          resources:
            requests:
              cpu: {{ $head.cpu | quote }}
              memory: {{ $head.memory }}
            limits:
              cpu: {{ $head.cpu | quote }}
              memory: {{ $head.memory }}
          {{- include "raysys.containerSecurityContext" $root | nindent 10 }}
          {{- include "raysys.rayVolumeMounts" . | nindent 10 }}
      {{- include "raysys.rayVolumes" (dict "root" $root "shmSize" $head.shmSize "serve" .serve) | nindent 6 }}
{{- end }}

{{/* One worker group; call with (dict "root" $ "name" "cpu" "group" .Values.workers.cpu "gpu" false "serve" false). */}}
{{- define "raysys.workerGroup" -}}
{{- $root := .root -}}
{{- $g := .group -}}
- groupName: {{ .name }}
  # Initial number of pods; the autoscaler then keeps it within [minReplicas, maxReplicas].
  replicas: {{ $g.replicas }}
  minReplicas: {{ $g.minReplicas }}
  maxReplicas: {{ $g.maxReplicas }}
  # Arguments of `ray start`; CPUs, memory and GPUs are taken from the limits.
  rayStartParams: {}
  # Pod template of this group's workers.
  template:
    metadata:
      labels:
        {{- include "raysys.labels" (dict "root" $root "component" (ternary "ray-worker-gpu" "ray-worker" .gpu)) | nindent 8 }}
    spec:
      # The Ray pods' service account (see rbac.yaml).
      serviceAccountName: {{ include "raysys.rayServiceAccountName" $root }}
      # Workers never call the Kubernetes API.
      automountServiceAccountToken: false
      {{- if .serve }}
      {{- include "raysys.serveGracePeriod" . | nindent 6 }}
      {{- end }}
      {{- include "raysys.podSecurityContext" $root | nindent 6 }}
      {{- if $root.Values.image.pullSecrets }}
      {{- include "raysys.imagePullSecrets" $root | nindent 6 }}
      {{- end }}
      {{- with $g.nodeSelector }}
      # Where this group's pods may run (example: GPU nodes).
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $g.tolerations }}
      # Taints this group's pods tolerate (example: the GPU node taint).
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        # The first container must be the Ray container.
        - name: ray-worker
          {{- if .gpu }}
          # The GPU image: CUDA build of torch.
          image: {{ include "raysys.gpuImage" $root }}
          {{- else }}
          image: {{ include "raysys.image" $root }}
          {{- end }}
          # IfNotPresent suits pinned tags (and images loaded into kind/minikube).
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          ports:
            # Prometheus metrics.
            - name: metrics
              containerPort: 8080
          {{- include "raysys.rayEnv" (dict "root" $root "serve" .serve) | nindent 10 }}
          # Leave the cluster gracefully when the autoscaler removes the pod.
          lifecycle:
            preStop:
              exec:
                command: ["/bin/sh", "-c", "ray stop"]
          # KubeRay recommends requests == limits for Ray pods.
          resources:
            requests:
              cpu: {{ $g.cpu | quote }}
              memory: {{ $g.memory }}
              {{- if .gpu }}
              nvidia.com/gpu: {{ $g.gpus }}
              {{- end }}
            limits:
              cpu: {{ $g.cpu | quote }}
              memory: {{ $g.memory }}
              {{- if .gpu }}
              # GPUs must be in limits; Ray advertises this many GPUs.
              nvidia.com/gpu: {{ $g.gpus }}
              {{- end }}
          {{- include "raysys.containerSecurityContext" $root | nindent 10 }}
          {{- include "raysys.rayVolumeMounts" . | nindent 10 }}
      {{- include "raysys.rayVolumes" (dict "root" $root "shmSize" $g.shmSize "serve" .serve) | nindent 6 }}
{{- end }}

{{/* The body of a RayCluster spec; call with (dict "root" $ "serve" false). */}}
{{- define "raysys.rayClusterSpec" -}}
{{- $root := .root -}}
{{- if hasKey $root.Values.rayAuth "secretName" }}
{{- fail "rayAuth.secretName was renamed rayAuth.existingSecret (a Secret with the key auth_token)" }}
{{- end -}}
# Ray version in every container; equals the image tag's Ray version and pyproject's ray pin.
rayVersion: {{ $root.Values.rayVersion | quote }}
{{- if $root.Values.rayAuth.enabled }}
# Token authentication of the dashboard / Job API and Ray's RPCs: KubeRay sets RAY_AUTH_MODE=token
# and RAY_AUTH_TOKEN (from the Secret's key "auth_token") in every Ray container and the
# RayJob submitter.
authOptions:
  mode: token
  secretName: {{ include "raysys.rayTokenSecretName" $root }}
{{- end }}
{{ include "raysys.autoscaling" $root }}
{{ include "raysys.headGroupSpec" . }}
# Worker groups, each scaled between its minReplicas and maxReplicas.
workerGroupSpecs:
  # CPU workers: Ray Train workers, Tune trials, Serve replicas.
  {{- include "raysys.workerGroup" (dict "root" $root "name" "cpu" "group" $root.Values.workers.cpu "gpu" false "serve" .serve) | nindent 2 }}
  {{- if $root.Values.workers.gpu.enabled }}
  # GPU workers: created only when a job asks for GPUs (or minReplicas > 0).
  {{- include "raysys.workerGroup" (dict "root" $root "name" "gpu" "group" $root.Values.workers.gpu "gpu" true "serve" .serve) | nindent 2 }}
  {{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds of the RayService's pods; call with (dict "root" $). */}}
{{- define "raysys.serveGracePeriod" -}}
# Longer than Serve's drain: HAProxy's draining period (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S,
# 30 s) plus the replicas' graceful_shutdown_timeout_s (20 s), so in-flight requests finish.
terminationGracePeriodSeconds: {{ .root.Values.rayService.terminationGracePeriodSeconds }}
{{- end }}

{{/* runtimeEnvYAML of the RayJobs: settings go to the scripts through env_vars. */}}
{{- define "raysys.runtimeEnvYAML" -}}
env_vars:
  MLFLOW_TRACKING_URI: {{ include "raysys.trackingUri" . | quote }}
  PYTHONUNBUFFERED: "1"
{{- end }}

{{/* submitterPodTemplate of the RayJobs: the pod that runs `ray job submit`. */}}
{{- define "raysys.submitterPodTemplate" -}}
# The Kubernetes Job pod that submits the entrypoint and follows it (K8sJobMode);
# KubeRay fills in the `ray job submit` command.
submitterPodTemplate:
  metadata:
    labels:
      {{- include "raysys.labels" (dict "root" . "component" "ray-job-submitter") | nindent 6 }}
  spec:
    restartPolicy: Never
    # Talks only to the Ray dashboard, never to the Kubernetes API.
    automountServiceAccountToken: false
    {{- include "raysys.podSecurityContext" . | nindent 4 }}
    {{- if .Values.image.pullSecrets }}
    {{- include "raysys.imagePullSecrets" . | nindent 4 }}
    {{- end }}
    volumes:
      {{- include "raysys.scratchVolumes" . | nindent 6 }}
    containers:
      - name: ray-job-submitter
        # Same image as the head, so the Ray CLI versions match.
        image: {{ include "raysys.image" . }}
        imagePullPolicy: {{ .Values.image.pullPolicy }}
        resources:
          requests:
            cpu: 200m
            memory: 256Mi
          limits:
            cpu: "1"
            memory: 1Gi
        {{- include "raysys.containerSecurityContext" . | nindent 8 }}
        volumeMounts:
          {{- include "raysys.scratchVolumeMounts" . | nindent 10 }}
{{- end }}

{{/* Label selector of every Ray head and worker pod of the release (no "podSelector:" key). */}}
{{- define "raysys.rayPodSelector" -}}
matchLabels:
  app.kubernetes.io/name: {{ include "raysys.name" . }}
  app.kubernetes.io/instance: {{ .Release.Name }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values: ["ray-head", "ray-worker", "ray-worker-gpu"]
{{- end }}

{{/* NetworkPolicyPeers of the clients of the Ray head and MLflow: the release's pods, pods with
networkPolicy.clientPodLabels, networkPolicy.extraClientPeers. */}}
{{- define "raysys.clientPeers" -}}
# Every pod of this release (Ray pods, RayJob submitters, MLflow, helm test).
- podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ include "raysys.name" . }}
      app.kubernetes.io/instance: {{ .Release.Name }}
# Client pods in the release namespace (notebooks, CI) carrying networkPolicy.clientPodLabels.
- podSelector:
    matchLabels:
      {{- toYaml .Values.networkPolicy.clientPodLabels | nindent 6 }}
{{- with .Values.networkPolicy.extraClientPeers }}
{{ toYaml . }}
{{- end }}
{{- end }}
