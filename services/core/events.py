"""Redis pub/sub channels services use to tell each other what changed."""

# Published by data with the dataset id after a delete; viz drops that dataset's charts.
DATASET_DELETED = "dl:events:dataset-deleted"
