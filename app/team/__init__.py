"""A team: accounts and roles, who may log in, who views and edits which image."""
