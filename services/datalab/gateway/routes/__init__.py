"""The gateway's routes: the public auth API (`auth`, `api_keys`, under /api/v1/auth) and the
internal routes Traefik's public routers never lead to (`internal`, under /internal/auth)."""
