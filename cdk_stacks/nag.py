"""cdk-nag AwsSolutions findings the per-electron stack accepts, each with its reason.

Plain data: `cdk_nag` is a test dependency only, and the product never imports it. The tests
apply these as stack suppressions and fail on any other finding, so a new finding is either
fixed in the template or added here with a reason a reviewer can judge.
"""

from __future__ import annotations

from types import MappingProxyType

AWS_SOLUTIONS_SUPPRESSIONS: MappingProxyType[str, str] = MappingProxyType(
    {
        "AwsSolutions-EC23": (
            "SSH ingress comes only from the SshIngressCidr parameter, which cdk-nag cannot "
            "resolve; the executor passes the dispatching machine's /32, the parameter has no "
            "default and an IPv4-CIDR AllowedPattern, and no rule uses a literal 0.0.0.0/0."
        ),
        "AwsSolutions-EC28": (
            "Detailed monitoring bills per instance for one-minute metrics; a per-task instance "
            "lives minutes, and the executor reports its state from CloudFormation and SSH."
        ),
        "AwsSolutions-EC29": (
            "Termination protection would block the stack deletion that tears down every task "
            "instance; the instance is deliberately disposable and terminates on shutdown."
        ),
        "AwsSolutions-VPC7": (
            "The created VPC holds one task instance and lives as long as the task; flow logs "
            "would need a log group and an IAM role per electron (minutes of stack time) and "
            "outlive the stack. Accounts that need flow logs pass an existing, logged VPC."
        ),
    }
)
"""Rule id -> reason. Applied to every shape; each rule is raised by at least one shape."""
