"""Model training: churn, lifetime value and recommendations."""
