"""The customer models: churn and lifetime value, their purchase-history part (BG/NBD and Gamma-Gamma),\nthe simple baselines they are compared with, and their training runs."""
