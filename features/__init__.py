"""Order-data ingestion, feature computation and the Feast feature repository."""
