"""The BentoML service that answers the storefront and the CRM."""
