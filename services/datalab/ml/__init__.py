"""Machine-learning code shared by the ai service and the compute workers."""
