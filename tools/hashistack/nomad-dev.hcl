# Extra config for a local `nomad agent -dev` on these machines:
#   tools/hashistack/bin/nomad agent -dev -bind 127.0.0.1 -config tools/hashistack/nomad-dev.hcl
# Add a `ports { http = ... rpc = ... serf = ... }` block (another -config file)
# to run beside other agents.
client {
  options = {
    # The cloud metadata fingerprinters probe 169.254.169.254 (never a target
    # here), and env_aws aborts the agent when AWS_CA_BUNDLE is set, as it is on
    # these machines:
    #   client setup failed: fingerprinting failed: failed to setup IMDS client:
    #   unable to add custom RootCAs HTTPClient, has no WithTransportOptions, *http.Client
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
  }
}
