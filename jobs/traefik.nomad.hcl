# Traefik, on every client (system job): routes by the Consul Catalog tags each service
# job sets (exposedByDefault=false), and holds the two middlewares every router shares,
# declared once here: `auth` (forwardAuth to the gateway) and `retry`.

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
  http_port  = lookup(var.ports, "traefik_http", 8080)
  https_port = lookup(var.ports, "traefik_https", 8443)
  ping_port  = lookup(var.ports, "traefik_ping", 8082)
  auth_port  = lookup(var.ports, "traefik_auth", 8083)
  # Clusters (Vagrant, production: the Docker driver) serve HTTPS on websecure and only
  # redirect plain HTTP to it (forwardAuth has its own loopback `auth` entrypoint, so the
  # redirect never reaches it). One machine (raw_exec: make e2e) is plain HTTP on web, as
  # the embedded platform.
  https_edge = var.driver == "docker"
  # The static config's line that differs between the two (YAML flow style).
  redirect  = "http: { redirections: { entryPoint: { to: websecure, scheme: https, permanent: true } } }"
  web_role  = local.https_edge ? local.redirect : "asDefault: true"
  resources = lookup(var.resources, "traefik", { cpu = 300, memory = 256 })
}

job "traefik" {
  datacenters = var.datacenters
  type        = "system"

  update {
    max_parallel     = 1
    health_check     = "checks"
    min_healthy_time = "10s"
    healthy_deadline = "3m"
  }

  group "traefik" {
    shutdown_delay = "5s"

    network {
      port "http" {
        static = local.http_port
      }
      port "https" {
        static = local.https_port
      }
      port "ping" {
        static = local.ping_port
      }
    }

    service {
      name     = "traefik"
      provider = "consul"
      port     = "http"
      tags     = ["traefik.enable=false"]

      check {
        name     = "ping"
        type     = "http"
        port     = "ping"
        path     = "/ping"
        interval = "10s"
        timeout  = "2s"
        check_restart {
          limit = 3
          grace = "30s"
        }
      }
    }

    task "traefik" {
      driver = var.driver
      # raw_exec: the unprivileged user by name; docker: the same ids (or the image's USER
      # when run_as_uid is -1). The secrets/ files below are owned by these ids.
      user = var.driver == "raw_exec" ? var.run_as_user : (var.run_as_uid >= 0 ? "${var.run_as_uid}:${var.run_as_gid}" : "")

      # Nomad logs this task into Consul with its workload identity (auth method
      # `nomad-workloads`, when the servers set consul.task_identity) and hands it the
      # token (CONSUL_HTTP_TOKEN): the Consul Catalog provider reads the catalog with it
      # (endpoint.token below; Traefik ignores CONSUL_HTTP_TOKEN). On a dev agent without a
      # Consul task identity the token is empty and nothing changes.
      consul {}

      dynamic "config" {
        for_each = var.driver == "docker" ? [1] : []
        content {
          image        = "traefik:v3.7"
          network_mode = "host"
          args         = ["--configFile=${NOMAD_SECRETS_DIR}/traefik.yml"]
        }
      }
      dynamic "config" {
        for_each = var.driver == "raw_exec" ? [1] : []
        content {
          command = "${var.venv}/bin/traefik"
          args    = ["--configFile=${NOMAD_SECRETS_DIR}/traefik.yml"]
        }
      }

      # Static configuration: entrypoints, the Consul Catalog provider, the file provider.
      # Entrypoint timeouts never 0 (a slowloris held a connection forever); the values and
      # why: config/traefik/traefik.yml.
      # In secrets/ (owned by the task's user), as it carries the task's Consul token.
      # Routers from Consul tags name no entrypoint: they join the asDefault ones (websecure,
      # and web unless it redirects: see https_edge), never `ping`. websecure terminates TLS
      # (Traefik's default certificate until a certificate resolver or a file-provider
      # certificate is configured).
      template {
        destination = "secrets/traefik.yml"
        change_mode = "restart"
        perms       = "0400"
        uid         = var.run_as_uid
        gid         = var.run_as_gid
        data        = <<-EOT
          entryPoints:
            web:
              address: ":${local.http_port}"
              ${local.web_role}
              transport: &timeouts
                respondingTimeouts:
                  readTimeout: 10m
                  writeTimeout: 15m
                  idleTimeout: 90s
            websecure:
              address: ":${local.https_port}"
              asDefault: true
              http:
                tls: {}
              transport: *timeouts
            ping:
              address: ":${local.ping_port}"
              transport: *timeouts
            # forwardAuth's own hop to a gateway (its router is tagged entrypoints=auth):
            # loopback only, and it keeps the X-Forwarded-For forwardAuth set, the real
            # client's, which the gateway believes from Traefik's address alone.
            auth:
              address: "127.0.0.1:${local.auth_port}"
              forwardedHeaders:
                trustedIPs: ["127.0.0.1/32"]
              transport: *timeouts
          ping:
            entryPoint: ping
          providers:
            consulCatalog:
              endpoint:
                address: "${split("://", var.consul_addr)[1]}"
                scheme: "${split("://", var.consul_addr)[0]}"
                token: "{{ env "CONSUL_HTTP_TOKEN" }}"
              exposedByDefault: false
              strictChecks: ["passing"]
              refreshInterval: 2s # under shutdown_delay (5s): a stopping instance leaves the routes first
            file:
              filename: "{{ env "NOMAD_TASK_DIR" }}/dynamic.yml"
              watch: true
          log:
            level: INFO
            format: json
          accessLog:
            format: json
          global:
            checkNewVersion: false
            sendAnonymousUsage: false
        EOT
      }

      # The shared middlewares, declared once. forwardAuth goes through Traefik's loopback
      # `auth` entrypoint to a passing gateway instance (so any gateway may answer); no
      # public router leads to /internal/, and the token it mints goes upstream only.
      template {
        destination = "local/dynamic.yml"
        change_mode = "noop" # Traefik watches the file
        data        = <<-EOT
          http:
            middlewares:
              auth:
                forwardAuth:
                  address: "http://127.0.0.1:${local.auth_port}/internal/auth/verify"
                  authResponseHeaders: ["X-User-Id", "X-User-Name", "Authorization"]
                  trustForwardHeader: false
                  maxResponseBodySize: 65536
              retry:
                retry:
                  attempts: 3
                  initialInterval: 100ms
        EOT
      }

      resources {
        cpu    = local.resources.cpu
        memory = local.resources.memory
      }
    }
  }
}
