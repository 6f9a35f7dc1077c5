{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "file-system.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, unless the release name already holds the chart name. */}}
{{- define "file-system.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "file-system.selectorLabels" -}}
app.kubernetes.io/name: {{ include "file-system.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "file-system.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "file-system.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "file-system.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding credentials: the user's own, or the chart's. */}}
{{- define "file-system.secretName" -}}
{{- default (include "file-system.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{- define "file-system.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "file-system.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Selector labels as a dict, for objects built in templates (affinity, spread). */}}
{{- define "file-system.selectorLabelsDict" -}}
{{- toJson (dict "app.kubernetes.io/name" (include "file-system.name" .) "app.kubernetes.io/instance" .Release.Name) -}}
{{- end -}}

{{/* The replicas the workload never goes below: the HPA's minimum when it scales the
     Deployment, else replicaCount. */}}
{{- define "file-system.minReplicas" -}}
{{- if .Values.autoscaling.enabled -}}
{{- .Values.autoscaling.minReplicas -}}
{{- else -}}
{{- .Values.replicaCount -}}
{{- end -}}
{{- end -}}

{{/* Database settings that are not secret, as container env entries. */}}
{{- define "file-system.databaseEnv" -}}
{{- if and (not .Values.database.url) .Values.database.host }}
- name: POSTGRES_HOST
  value: {{ .Values.database.host | quote }}
- name: POSTGRES_PORT
  value: {{ .Values.database.port | quote }}
- name: POSTGRES_USERNAME
  value: {{ .Values.database.username | quote }}
- name: POSTGRES_DB_NAME
  value: {{ .Values.database.dbName | quote }}
{{- end }}
{{- end -}}

{{/* The ConfigMap's data: every `config` entry, as a string. Rendered into the release's
     ConfigMap and into the migration hook's copy. */}}
{{- define "file-system.configData" -}}
{{- range $key, $value := .Values.config }}
{{ $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* The Secret's data when the chart creates it (keys are the variable names). */}}
{{- define "file-system.secretData" -}}
{{- if .Values.database.url }}
DATABASE_URL: {{ .Values.database.url | b64enc | quote }}
{{- end }}
{{- if .Values.database.password }}
POSTGRES_PASSWORD: {{ .Values.database.password | b64enc | quote }}
{{- end }}
{{- if .Values.s3.accessKeyId }}
AWS_ACCESS_KEY_ID: {{ .Values.s3.accessKeyId | b64enc | quote }}
{{- end }}
{{- if .Values.s3.secretAccessKey }}
AWS_SECRET_ACCESS_KEY: {{ .Values.s3.secretAccessKey | b64enc | quote }}
{{- end }}
{{- if .Values.auth.jwtHs256Secret }}
FS_JWT_HS256_SECRET: {{ .Values.auth.jwtHs256Secret | b64enc | quote }}
{{- end }}
{{- if .Values.auth.metricsToken }}
FS_METRICS_TOKEN: {{ .Values.auth.metricsToken | b64enc | quote }}
{{- end }}
{{- end -}}

{{/* The settings every container that runs the service's code gets, the Deployment's and
     the migration Job's alike, so that they cannot drift apart. Called with
     (dict "root" $ "suffix" S): S is "" for the release's ConfigMap and Secret and "-migrate"
     for the hook's copies (a pre-install hook runs before the release's objects exist).
     envFrom: the config, the chart's Secret (its keys are the variable names), extraEnvFrom. */}}
{{- define "file-system.envFrom" -}}
{{- $root := .root -}}
{{- $name := printf "%s%s" (include "file-system.fullname" $root) .suffix -}}
- configMapRef:
    name: {{ $name }}
{{- if not $root.Values.existingSecret }}
- secretRef:
    name: {{ $name }}
{{- end }}
{{- with $root.Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* env: the database settings, the existing Secret's values under the key names
     existingSecretKeys gives (a key set to "" is not read; a key missing from the Secret is
     skipped, as envFrom would), then extraEnv, which wins over everything before it. */}}
{{- define "file-system.env" -}}
{{- $root := .root -}}
{{- include "file-system.databaseEnv" $root }}
{{- if $root.Values.existingSecret }}
{{- $keys := $root.Values.existingSecretKeys }}
{{- range $var, $key := dict "DATABASE_URL" $keys.databaseUrl "POSTGRES_PASSWORD" $keys.databasePassword "AWS_ACCESS_KEY_ID" $keys.accessKeyId "AWS_SECRET_ACCESS_KEY" $keys.secretAccessKey "FS_JWT_HS256_SECRET" $keys.jwtHs256Secret "FS_METRICS_TOKEN" $keys.metricsToken }}
{{- if $key }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.existingSecret }}
      key: {{ $key | quote }}
      optional: true
{{- end }}
{{- end }}
{{- end }}
{{- include "file-system.authEnv" $root }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Where the tokens file and the JWT public key are mounted (directories, so that an update
     of their Secret reaches the pod, and the service reloads the tokens). */}}
{{- define "file-system.authEnv" -}}
{{- if .Values.auth.tokensSecret }}
- name: FS_AUTH_TOKENS_FILE
  value: /etc/file-system/tokens/tokens
{{- end }}
{{- if .Values.auth.jwtPublicKeySecret }}
- name: FS_JWT_PUBLIC_KEY_FILE
  value: /etc/file-system/jwt/public.pem
{{- end }}
{{- end -}}

{{/* The volumes of the tokens file and JWT public key Secrets, and the extra volumes. */}}
{{- define "file-system.volumes" -}}
{{- if .Values.auth.tokensSecret }}
- name: auth-tokens
  secret:
    secretName: {{ .Values.auth.tokensSecret }}
    items:
      - key: {{ .Values.auth.tokensSecretKey | quote }}
        path: tokens
{{- end }}
{{- if .Values.auth.jwtPublicKeySecret }}
- name: auth-jwt
  secret:
    secretName: {{ .Values.auth.jwtPublicKeySecret }}
    items:
      - key: {{ .Values.auth.jwtPublicKeySecretKey | quote }}
        path: public.pem
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Their mounts, and the extra volume mounts, for every container running the service. */}}
{{- define "file-system.volumeMounts" -}}
{{- if .Values.auth.tokensSecret }}
- name: auth-tokens
  mountPath: /etc/file-system/tokens
  readOnly: true
{{- end }}
{{- if .Values.auth.jwtPublicKeySecret }}
- name: auth-jwt
  mountPath: /etc/file-system/jwt
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Refuses a release that cannot work: no database configured. */}}
{{- define "file-system.validate" -}}
{{- if not (or .Values.database.url .Values.database.host .Values.existingSecret) -}}
{{- fail "set database.url or database.host (PostgreSQL), or existingSecret with DATABASE_URL" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas is above autoscaling.maxReplicas" -}}
{{- end -}}
{{- end -}}
