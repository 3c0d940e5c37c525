# DataLab compute-batch: a parameterized batch job. The compute API records a heavy job in
# RQ (queue "nomad") and dispatches one instance of this job for it (python-nomad; by hand:
# `nomad job dispatch -meta rq_job_id=... -meta job_type=... compute-batch`); the
# allocation runs exactly one job with the ordinary worker code, then exits.

# ---- common variables: every job declares the same set (tests/jobs checks it) -----------
variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}
variable "driver" {
  description = "docker (clusters) or raw_exec (one machine, the project's virtualenv)"
  type        = string
  default     = "docker"
}
variable "image" {
  type    = string
  default = "datalab:0.1.0"
}
variable "venv" {
  description = "raw_exec: the virtualenv holding the datalab command"
  type        = string
  default     = "/opt/datalab/.venv"
}
variable "run_as_user" {
  description = "raw_exec: the unprivileged user tasks run as"
  type        = string
  default     = "datalab"
}
variable "run_as_uid" {
  description = "owner of the rendered secrets/ files: run_as_user's uid on the clients (raw_exec) or the image's USER (docker). -1 = the Nomad agent's user (root): only right for a task running as root"
  type        = number
  default     = -1
}
variable "run_as_gid" {
  description = "group of the rendered secrets/ files (see run_as_uid)"
  type        = number
  default     = -1
}
variable "datalab_home" {
  description = "raw_exec: the shared datasets/models directory (docker mounts the host volume)"
  type        = string
  default     = "/srv/datalab"
}
variable "consul_addr" {
  type    = string
  default = "http://127.0.0.1:8500"
}
variable "counts" {
  description = "instances per job or group, e.g. { data = 2, workers = 3 }"
  type        = map(number)
  default     = {}
}
variable "resources" {
  description = "per job or group: { data = { cpu = 500, memory = 512 } }"
  type        = map(object({ cpu = number, memory = number }))
  default     = {}
}
variable "gpu_count" {
  description = "GPUs for the ai job (0: none, no device block)"
  type        = number
  default     = 0
}
variable "gpu_min_memory" {
  type    = string
  default = "16 GiB"
}
variable "log_level" {
  type    = string
  default = "INFO"
}
variable "ports" {
  description = "static ports: traefik_http, traefik_ping (others are dynamic)"
  type        = map(number)
  default     = {}
}
variable "nomad_addr" {
  description = "compute: dispatch heavy jobs to compute-batch through this Nomad ('' = off)"
  type        = string
  default     = ""
}
variable "version_tag" {
  description = "changes the job (a new deployment) without changing the code: for rollouts"
  type        = string
  default     = "1"
}
# -----------------------------------------------------------------------------------------

locals {
  resources = lookup(var.resources, "compute-batch", { cpu = 2000, memory = 2048 })
}

job "compute-batch" {
  datacenters = var.datacenters
  type        = "batch"

  parameterized {
    payload       = "optional"
    meta_required = ["rq_job_id", "job_type"] # NomadDispatcher sends both
  }

  group "run" {
    count = 1

    restart {
      attempts = 1
      delay    = "10s"
      mode     = "fail"
    }

    reschedule {
      attempts  = 2
      interval  = "1h"
      delay     = "30s"
      unlimited = false
    }

    dynamic "volume" {
      for_each = var.driver == "docker" ? ["datalab"] : []
      labels   = [volume.value]
      content {
        type      = "host"
        source    = "datalab"
        read_only = false
      }
    }

    task "job" {
      driver = var.driver
      # raw_exec: the unprivileged user by name; docker: the same ids (or the image's USER
      # when run_as_uid is -1). The secrets/ files below are owned by these ids.
      user = var.driver == "raw_exec" ? var.run_as_user : (var.run_as_uid >= 0 ? "${var.run_as_uid}:${var.run_as_gid}" : "")

      # Nomad logs this task into Consul with its workload identity (auth method
      # `nomad-workloads`, when the servers set consul.task_identity): the template's
      # service lookups and the app's discovery then use the task's own token
      # (CONSUL_HTTP_TOKEN, secrets/consul_token). On a dev agent without it: no change.
      consul {}

      dynamic "config" {
        for_each = var.driver == "docker" ? [1] : []
        content {
          image = var.image
          args  = ["worker"]
        }
      }
      dynamic "config" {
        for_each = var.driver == "raw_exec" ? [1] : []
        content {
          command = "${var.venv}/bin/datalab"
          args    = ["worker"]
        }
      }
      dynamic "volume_mount" {
        for_each = var.driver == "docker" ? ["datalab"] : []
        content {
          volume      = "datalab"
          destination = "/srv/datalab"
        }
      }

      # A dispatch payload (optional: the RQ job in Redis carries the parameters) is
      # written to ${NOMAD_TASK_DIR}/payload.json.
      dispatch_payload {
        file = "payload.json"
      }

      # The workers' role (bound on this job and task name): the platform API key and the
      # workers' Redis user.
      vault {
        role         = "nomad-compute-worker"
        change_mode  = "noop" # a one-job run: a re-rendered secret can wait for the next
        env          = false
        disable_file = true # nor a secrets/vault_token file: templates use Nomad's own copy
      }

      env {
        DATALAB_WORKER_QUEUES   = "[\"nomad\"]"
        DATALAB_WORKER_BURST    = "true"
        DATALAB_WORKER_MAX_JOBS = "1"
        DATALAB_HOME            = var.driver == "docker" ? "/srv/datalab" : var.datalab_home
        DATALAB_SECRETS_DIR     = "${NOMAD_SECRETS_DIR}"
        # raw_exec inherits the agent's HOME (/root), where libraries look (asyncpg:
        # ~/.postgresql). The task's own directory is its home.
        HOME                = "${NOMAD_TASK_DIR}"
        DATALAB_DISCOVERY   = "consul"
        DATALAB_CONSUL_ADDR = var.consul_addr
        DATALAB_LOG_LEVEL   = var.log_level
        DATALAB_DEVICE      = "auto"
      }

      template {
        destination = "local/endpoints.env"
        env         = true
        change_mode = "noop"
        data        = <<-EOT
          {{ with $r := service "redis" }}{{ with index $r 0 }}DATALAB_REDIS_URL=redis://{{ .Address }}:{{ .Port }}/0{{ end }}{{ end }}
        EOT
      }

      # The workers' Redis ACL user (kv/datalab/redis/worker); re-read for every new connection.
      template {
        destination = "secrets/redis.json"
        change_mode = "noop"
        perms       = "0400"
        uid         = var.run_as_uid
        gid         = var.run_as_gid
        data        = "{{ with secret \"kv/data/datalab/redis/worker\" }}{{ .Data.data | toJSON }}{{ end }}"
      }

      template {
        destination = "secrets/service_api_key"
        change_mode = "noop"
        perms       = "0400"
        uid         = var.run_as_uid
        gid         = var.run_as_gid
        data        = "{{ with secret \"kv/data/datalab/platform\" }}{{ .Data.data.service_api_key }}{{ end }}"
      }

      resources {
        cpu    = local.resources.cpu
        memory = local.resources.memory
      }
    }
  }
}
