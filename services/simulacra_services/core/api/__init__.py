"""API-edge helpers shared by every service: filters, pagination, resource names."""
