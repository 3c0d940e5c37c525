# A GPU client: client.hcl plus the external nomad-device-nvidia plugin, which makes
# `device "nvidia/gpu"` (the ai job with gpu_count > 0) schedulable here.
plugin_dir = "/opt/nomad/plugins" # holds the nomad-device-nvidia binary

client {
  meta = {
    gpu = "nvidia"
  }
}

plugin "nomad-device-nvidia" {
  config {
    enabled            = true
    fingerprint_period = "1m"
  }
}
