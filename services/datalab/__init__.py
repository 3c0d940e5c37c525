"""DataLab: five FastAPI services and RQ workers on the HashiCorp stack."""
