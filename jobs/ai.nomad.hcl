# DataLab ai service: trains models and serves predictions (micro-batched). Uses a GPU
# when gpu_count > 0 (jobs/vars/production.hcl), the CPU otherwise.

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
  description = "per job or group: { data = { cpu = 1000, memory = 1024 } }"
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
  name      = "ai"
  resources = lookup(var.resources, "ai", { cpu = 1000, memory = 1024 })
}

job "ai" {
  datacenters = var.datacenters
  type        = "service"
  meta = {
    version_tag = var.version_tag
  }

  update {
    max_parallel      = 1
    canary            = 1
    auto_promote      = true
    auto_revert       = true
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
  }

  migrate {
    max_parallel     = 1
    health_check     = "checks"
    min_healthy_time = "10s"
    healthy_deadline = "3m"
  }

  reschedule {
    delay          = "30s"
    delay_function = "exponential"
    max_delay      = "10m"
    unlimited      = true
  }

  group "api" {
    count = lookup(var.counts, "ai", 2)
    # Consul deregisters the instance, Traefik stops routing to it, then the task stops.
    shutdown_delay = "5s"

    spread {
      attribute = "${node.unique.name}"
    }

    scaling {
      enabled = true
      min     = 1
      max     = 10
    }

    network {
      port "http" {}
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

    restart {
      attempts         = 3
      interval         = "5m"
      delay            = "15s"
      mode             = "fail"
      render_templates = true
    }

    service {
      name     = "ai"
      provider = "consul"
      port     = "http"
      tags = [
        "traefik.enable=true",
        "traefik.http.routers.ai.rule=PathPrefix(`/api/v1/ai`)",
        "traefik.http.routers.ai.middlewares=auth@file,retry@file",
      ]
      # A canary gets no public traffic until promoted, except requests that ask for it
      # and those no stable instance is left to serve.
      canary_tags = [
        "traefik.enable=true",
        "traefik.consulcatalog.canary=true",
        "traefik.http.routers.ai-canary.rule=PathPrefix(`/api/v1/ai`) && Header(`X-Canary`, `1`)",
        "traefik.http.routers.ai-canary.middlewares=auth@file,retry@file",
        # Lowest priority: used only when no stable instance is routed, as in the moment
        # after a promotion when the old instances have left Consul and the promoted one
        # still carries these tags.
        "traefik.http.routers.ai-canary-fallback.rule=PathPrefix(`/api/v1/ai`)",
        "traefik.http.routers.ai-canary-fallback.priority=1",
        "traefik.http.routers.ai-canary-fallback.middlewares=auth@file,retry@file",
      ]

      check {
        name     = "alive"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
        check_restart {
          limit = 3
          grace = "30s"
        }
      }
      check {
        name     = "ready"
        type     = "http"
        path     = "/ready"
        interval = "10s"
        timeout  = "3s"
        # A revoked credential or a PostgreSQL restart costs seconds (requests wait for
        # the new credential): it should not take the instance out of Traefik. A real
        # outage still shows within 30s.
        failures_before_critical = 3
      }
    }

    task "ai" {
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
          args  = ["serve", "ai"]
          ports = ["http"]
        }
      }
      dynamic "config" {
        for_each = var.driver == "raw_exec" ? [1] : []
        content {
          command = "${var.venv}/bin/datalab"
          args    = ["serve", "ai"]
        }
      }
      dynamic "volume_mount" {
        for_each = var.driver == "docker" ? ["datalab"] : []
        content {
          volume      = "datalab"
          destination = "/srv/datalab"
        }
      }

      vault {
        role         = "nomad-ai"
        change_mode  = "restart"
        env          = false # the app reads rendered files, never Vault itself
        disable_file = true  # nor a secrets/vault_token file: templates use Nomad's own copy
      }

      env {
        DATALAB_HOST        = var.driver == "docker" ? "0.0.0.0" : "${NOMAD_IP_http}"
        DATALAB_PORT        = "${NOMAD_PORT_http}"
        DATALAB_HOME        = var.driver == "docker" ? "/srv/datalab" : var.datalab_home
        DATALAB_SECRETS_DIR = "${NOMAD_SECRETS_DIR}"
        # raw_exec inherits the agent's HOME (/root), where libraries look (asyncpg:
        # ~/.postgresql). The task's own directory is its home.
        HOME                = "${NOMAD_TASK_DIR}"
        DATALAB_DISCOVERY   = "consul"
        DATALAB_CONSUL_ADDR = var.consul_addr
        DATALAB_LOG_LEVEL   = var.log_level
        DATALAB_DEVICE      = var.gpu_count > 0 ? "cuda" : "cpu"
        # Traefik's addresses from Consul (template below): audit lines name the real client.
        DATALAB_TRUSTED_PROXIES_FILE = "${NOMAD_TASK_DIR}/trusted_proxies"
      }

      # Traefik's addresses (a system job: every client's), whose X-Forwarded-For the app
      # believes; re-read by the app, so a Traefik node that joins costs no restart.
      template {
        destination = "local/trusted_proxies"
        change_mode = "noop"
        data        = "{{ range service \"traefik|any\" }}{{ .Address }},{{ end }}"
      }

      # Where PostgreSQL and Redis are, from Consul (no credentials here).
      template {
        destination = "local/endpoints.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with $pg := service "postgres" }}{{ with index $pg 0 }}DATALAB_DATABASE_URL=postgresql+asyncpg://{{ .Address }}:{{ .Port }}/datalab{{ end }}{{ end }}
          {{ with $r := service "redis" }}{{ with index $r 0 }}DATALAB_REDIS_URL=redis://{{ .Address }}:{{ .Port }}/0{{ end }}{{ end }}
        EOT
      }

      template {
        destination = "secrets/jwt_public_key.pem"
        change_mode = "restart"
        perms       = "0400"
        uid         = var.run_as_uid
        gid         = var.run_as_gid
        data        = "{{ with secret \"kv/data/datalab/shared\" }}{{ .Data.data.jwt_public_key }}{{ end }}"
      }

      # Its own Redis ACL user (kv/datalab/redis/ai); re-read for every new connection.
      template {
        destination = "secrets/redis.json"
        change_mode = "noop"
        perms       = "0400"
        uid         = var.run_as_uid
        gid         = var.run_as_gid
        data        = "{{ with secret \"kv/data/datalab/redis/ai\" }}{{ .Data.data | toJSON }}{{ end }}"
      }

      # This service's own short-lived PostgreSQL user. change_mode "noop": the app re-reads
      # db.json for every new connection and pre-pings pooled ones, so a new credential is
      # picked up without a restart and no request fails.
      template {
        destination = "secrets/db.json"
        change_mode = "noop"
        perms       = "0400"
        uid         = var.run_as_uid
        gid         = var.run_as_gid
        data        = <<-EOT
          {{ with secret "database/creds/ai" }}{"username": "{{ .Data.username }}", "password": "{{ .Data.password }}"}{{ end }}
        EOT
        # Requests wait for a replaced credential (core.db): render it as soon as Vault
        # hands it over, not after the client's default 5s quiescence.
        wait {
          min = "1s"
          max = "3s"
        }
      }

      resources {
        cpu    = local.resources.cpu
        memory = local.resources.memory

        # A GPU only when asked for: none is requested (or needed) when gpu_count = 0.
        dynamic "device" {
          for_each = var.gpu_count > 0 ? ["nvidia/gpu"] : []
          iterator = gpu # not "device": ${device.attr.memory} below is Nomad's runtime attribute
          labels   = [gpu.value]
          content {
            count = var.gpu_count
            constraint {
              attribute = "${device.attr.memory}"
              operator  = ">="
              value     = var.gpu_min_memory
            }
          }
        }
      }
    }
  }
}
