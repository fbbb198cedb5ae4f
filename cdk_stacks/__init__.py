"""The CDK app that defines the per-electron CloudFormation stack of ec2-executor."""
