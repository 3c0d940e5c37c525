"""Redis pub/sub channels services use to tell each other what changed."""

# Published by data with the dataset id after a delete; viz drops that dataset's charts.
DATASET_DELETED = "dl:events:dataset-deleted"

# Published by ai with the model id after a delete; every ai instance drops it from its cache.
MODEL_DELETED = "dl:events:model-deleted"
