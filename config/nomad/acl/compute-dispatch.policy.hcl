# Nomad ACL policy for the compute API's workload identity: dispatch compute-batch and
# follow its children. Attached to the task, not to a token:
#
#   nomad acl policy apply -namespace default -job compute -group api -task compute \
#     -description "compute API: dispatch compute-batch" \
#     datalab-compute-dispatch config/nomad/acl/compute-dispatch.policy.hcl
#
# The task reads its identity from secrets/nomad_token (`identity { file = true }` in
# jobs/compute.nomad.hcl). Nomad's ACLs are per namespace, not per job: to confine it to
# compute-batch alone, run compute-batch in a namespace of its own.
namespace "default" {
  capabilities = ["dispatch-job", "read-job", "list-jobs"]
}
