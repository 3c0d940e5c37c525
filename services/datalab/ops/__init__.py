"""The HashiCorp side: Vault bootstrap, Nomad deploy and status, Nomad dispatch."""
