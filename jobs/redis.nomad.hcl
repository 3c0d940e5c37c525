# Redis for caches, rate limits and the RQ queues. One ACL user per service, `default` off:
# the `user` lines come from Vault (kv/datalab/redis-server, built by `datalab vault bootstrap`
# from core/redis_users.py, password hashes only); each service reads only its own password.
# AOF keeps queued jobs across restarts. A memory limit with noeviction: nothing is dropped
# silently (queued jobs, results, refresh-token markers); when full, writes fail and the
# services answer "not cached" or 503 until TTLs free the space.

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
  resources = lookup(var.resources, "redis", { cpu = 500, memory = 512 })
  # maxmemory follows the task's memory (var.resources.redis.memory): 3/4 of it, leaving room
  # for the AOF rewrite's copy-on-write fork, client buffers and fragmentation.
  maxmemory_mb = floor(local.resources.memory * 3 / 4)
}

job "redis" {
  datacenters = var.datacenters
  type        = "service"

  update {
    max_parallel     = 1
    health_check     = "checks"
    min_healthy_time = "10s"
    healthy_deadline = "5m"
    auto_revert      = true
  }

  group "redis" {
    count          = 1 # one primary; its data lives on the host volume below
    shutdown_delay = "5s"

    # Stateful: it stays on the node holding its volume (no spread, no migrate).
    volume "redis" {
      type      = "host"
      source    = "redis"
      read_only = false
    }

    network {
      port "db" {
        to = 6379
      }
    }

    restart {
      attempts         = 5
      interval         = "10m"
      delay            = "15s"
      mode             = "delay"
      render_templates = true
    }

    service {
      name     = "redis"
      provider = "consul"
      port     = "db"
      tags     = ["traefik.enable=false"]

      check {
        name     = "tcp"
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
        check_restart {
          limit = 3
          grace = "60s"
        }
      }
    }

    # Always the Docker driver: on one machine (`make e2e`) PostgreSQL and Redis run as
    # host processes registered in Consul under these same service names.
    task "redis" {
      driver = "docker"

      config {
        image = "redis:7.4"
        ports = ["db"]
        args  = ["/secrets/redis.conf"]
      }

      volume_mount {
        volume      = "redis"
        destination = "/data"
      }

      vault {
        role         = "nomad-redis"
        change_mode  = "restart"
        env          = false
        disable_file = true # nor a secrets/vault_token file: templates use Nomad's own copy
      }

      template {
        destination = "secrets/redis.conf"
        change_mode = "restart"
        perms       = "0400"
        # redis-server runs as the image's `redis` user (uid/gid 999 in the official
        # Debian image; its entrypoint drops root): it must be able to read its config.
        uid  = 999
        gid  = 999
        data = <<-EOT
          {{ with secret "kv/data/datalab/redis-server" }}{{ .Data.data.acl }}{{ end }}
          appendonly yes
          dir /data
          maxmemory ${local.maxmemory_mb}mb
          maxmemory-policy noeviction
        EOT
      }

      resources {
        cpu    = local.resources.cpu
        memory = local.resources.memory
      }
    }
  }
}
