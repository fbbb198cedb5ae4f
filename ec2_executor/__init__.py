"""Run Covalent electrons on throw-away AWS EC2 instances."""
