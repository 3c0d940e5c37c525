# datalab-traefik: the traefik job issues its own HTTPS certificate from the edge CA
# (pki-edge/roles/traefik: server certificates for the edge's names only). Nothing else:
# no KV path, no database credential; its Consul token comes from Consul's own identity.

path "pki-edge/issue/traefik" {
  capabilities = ["update"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
