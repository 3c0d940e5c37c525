#!/usr/bin/env bash
# 61-nomad-acl (bootstrap server): Nomad's ACL system, once the servers have a leader.
#
# 1. `acl bootstrap`: the management token, root-only on this server
#    (/root/.datalab/nomad-bootstrap.json, 0600). `datalab deploy` (70-deploy) uses it.
# 2. The policies workloads need: config/nomad/acl/compute-dispatch.policy.hcl attached to the
#    compute job's api task (its workload identity may dispatch compute-batch), as the
#    policy file's header says. No token is made for the agents: Nomad agents need none.
set -euo pipefail
# shellcheck source=scripts/provision/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
only_on bootstrap
if dry; then
  say "dry-run: would bootstrap Nomad's ACLs and apply config/nomad/acl policies"
  exit 0
fi

readonly BOOT_FILE="$ADMIN_DIR/nomad-bootstrap.json"
install -d -m 0700 "$ADMIN_DIR"

nomad_leader() { api GET "$NOMAD_HTTP/v1/status/leader" && api_ok && [[ $API_BODY == '"'?*'"' ]]; }
wait_until "a Nomad leader (all ${#SERVER_IPS[@]} servers up)" 600 nomad_leader

if [[ ! -s $BOOT_FILE ]]; then
  api POST "$NOMAD_HTTP/v1/acl/bootstrap" </dev/null
  if [[ $API_BODY == *"already done"* ]]; then
    die "Nomad's ACLs were bootstrapped already, but $BOOT_FILE is gone: its management token is" \
      "lost. Reset (nomad acl bootstrap reset index: https://developer.hashicorp.com/nomad/docs/secure/acl/bootstrap) or rebuild."
  fi
  api_ok || die "nomad acl bootstrap: HTTP $API_CODE: $API_BODY"
  (umask 077 && printf '%s\n' "$API_BODY" >"$BOOT_FILE")
  say "created Nomad's management token ($BOOT_FILE, root-only)"
else
  say "unchanged Nomad ACL bootstrap ($BOOT_FILE)"
fi
NOMAD_MGMT="$(jq -r .SecretID "$BOOT_FILE")"
napi GET /v1/acl/token/self
api_ok || die "the management token in $BOOT_FILE is not valid here (HTTP $API_CODE): another cluster's?"

# ensure_policy NAME DESCRIPTION RULES_FILE [JOB GROUP TASK]: with a job, the policy is attached
# to that task's workload identity (namespace default).
ensure_policy() {
  local name=$1 description=$2 rules body verb=created
  rules="$(<"$3")"
  body="$(jq -n --arg name "$name" --arg description "$description" --arg rules "$rules" \
    --arg job "${4:-}" --arg group "${5:-}" --arg task "${6:-}" \
    '{Name: $name, Description: $description, Rules: $rules}
     + if $job == "" then {} else {JobACL: {Namespace: "default", JobID: $job, Group: $group, Task: $task}} end')"
  napi GET "/v1/acl/policy/$name"
  if [[ $API_CODE == 200 ]]; then
    if [[ "$(jq -S '{Rules, JobACL: (.JobACL // null | if . then {Namespace, JobID, Group, Task} else . end)}' <<<"$API_BODY")" == \
      "$(jq -S '{Rules, JobACL: (.JobACL // null)}' <<<"$body")" ]]; then
      say "unchanged nomad policy $name"
      return 0
    fi
    verb=updated
  elif [[ $API_CODE != 404 ]]; then
    die "reading nomad policy $name: HTTP $API_CODE: $API_BODY"
  fi
  napi POST "/v1/acl/policy/$name" <<<"$body"
  api_ok || die "writing nomad policy $name: HTTP $API_CODE: $API_BODY"
  say "$verb nomad policy $name"
}

ensure_policy datalab-compute-dispatch "compute API: dispatch compute-batch" \
  "$REPO/config/nomad/acl/compute-dispatch.policy.hcl" compute api compute
