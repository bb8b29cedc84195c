"""Talking to ModelArts and IAM: credentials, auth, the budgeted HTTP client, response parsing."""
