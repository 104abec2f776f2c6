"""A third-party EC2 for dibs's tests: moto's server on loopback, with what moto lacks.

moto (https://github.com/getmoto/moto) answers the EC2 Query API offline, but it never runs
out of capacity and checks no signature unless told to. This harness starts moto in process
on a free port and lets the test that spawned it arrange both, one command a line on stdin:

    ice ZONE...   RunInstances in these zones fails with moto's own EC2ClientError
                  InsufficientInstanceCapacity (no zones: none fails); answers "ok"
    throttle N    the next N RunInstances calls fail with RequestLimitExceeded (what EC2
                  answers a client that calls too fast); answers "ok"
    calls         answers a JSON object: RunInstances calls so far by zone (dry runs,
                  which moto answers before launching, are not counted)
    template NAME creates a launch template NAME (an image id and nothing else, as an
                  operator's template would hold); answers its id
    instances     answers a JSON list of every instance moto holds in every region, read from
                  its backend (so it works with signature checks on): id, region, zone,
                  state and tags
    terminate ID...  terminates these instances as EC2 would under a spot interruption (from
                  the backend, whatever the signature checks); answers "ok"
    auth          creates two IAM users with access keys, one allowed everything and one
                  allowed only ec2:Describe*, then switches signature checks on; answers a
                  JSON object with "access_key_id" and "secret_access_key" of the first,
                  "describe_only_key_id" and "describe_only_secret" of the second
    quit          stops (so does the end of stdin)

The first line on stdout is a JSON object with "endpoint" (http://127.0.0.1:PORT).
Instance types are validated (MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION), so a type moto
does not know is refused as real EC2 would.
"""

import json
import logging
import os
import sys
import threading

os.environ["MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION"] = "true"

import boto3  # noqa: E402  (moto reads its settings at import)
from moto import settings  # noqa: E402
from moto.core.authorization import ActionAuthenticatorMixin  # noqa: E402
from moto.ec2.exceptions import EC2ClientError  # noqa: E402
from moto.ec2.models.instances import InstanceBackend  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

ICE_MESSAGE = (
    "We currently do not have sufficient capacity in the Availability Zone you requested "
    "({zone}). Our system will be working on provisioning additional capacity."
)

lock = threading.Lock()
ice_zones: set[str] = set()
throttled_calls_left = 0
calls_by_zone: dict[str, int] = {}

moto_run_instances = InstanceBackend.run_instances


def run_instances_with_capacity(self, *args, **kwargs):
    """moto's RunInstances, failing with InsufficientInstanceCapacity in the named zones."""
    global throttled_calls_left
    zone = kwargs.get("placement") or ""
    with lock:
        calls_by_zone[zone] = calls_by_zone.get(zone, 0) + 1
        out_of_capacity = zone in ice_zones
        throttled = throttled_calls_left > 0
        throttled_calls_left = max(0, throttled_calls_left - 1)
    if throttled:
        raise EC2ClientError("RequestLimitExceeded", "Request limit exceeded.")
    if out_of_capacity:
        raise EC2ClientError("InsufficientInstanceCapacity", ICE_MESSAGE.format(zone=zone))
    return moto_run_instances(self, *args, **kwargs)


InstanceBackend.run_instances = run_instances_with_capacity


def throttle(calls: int) -> None:
    global throttled_calls_left
    with lock:
        throttled_calls_left = calls


def client(service: str, endpoint: str):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="harness",
        aws_secret_access_key="harness",
    )


def user_with_key(iam, name: str, actions: str) -> dict:
    """An IAM user allowed `actions` on everything, and its new access key."""
    iam.create_user(UserName=name)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
    }
    iam.put_user_policy(UserName=name, PolicyName="dibs-test", PolicyDocument=json.dumps(policy))
    return iam.create_access_key(UserName=name)["AccessKey"]


def switch_auth_on(endpoint: str) -> dict:
    """Two users' keys, and signatures and permissions checked from now on."""
    iam = client("iam", endpoint)
    full = user_with_key(iam, "dibs", "*")
    describe_only = user_with_key(iam, "dibs-describe-only", "ec2:Describe*")
    # Every request from now on is authenticated. moto runs in this process, so the harness
    # sets what moto's POST /moto-api/reset-auth would (that call answers 500 here).
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    return {
        "access_key_id": full["AccessKeyId"],
        "secret_access_key": full["SecretAccessKey"],
        "describe_only_key_id": describe_only["AccessKeyId"],
        "describe_only_secret": describe_only["SecretAccessKey"],
    }


def all_instances() -> list:
    """Every instance of the default account, in every region, from moto's backend."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    found = []
    for region, backend in ec2_backends[DEFAULT_ACCOUNT_ID].items():
        for instance in backend.all_instances():
            tags = {t["key"]: t["value"] for t in instance.get_tags()}
            found.append(
                {
                    "id": instance.id,
                    "region": region,
                    "zone": instance.placement.zone if hasattr(instance.placement, "zone") else None,
                    "state": instance.state,
                    "tags": tags,
                }
            )
    return found


def terminate(ids: list) -> None:
    """Terminates instances from moto's backend, as a spot interruption would."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    for backend in ec2_backends[DEFAULT_ACCOUNT_ID].values():
        mine = [i.id for i in backend.all_instances() if i.id in ids]
        if mine:
            backend.terminate_instances(mine)


def create_launch_template(endpoint: str, name: str) -> str:
    ec2 = client("ec2", endpoint)
    data = {"ImageId": "ami-12345678"}
    template = ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData=data)
    return template["LaunchTemplate"]["LaunchTemplateId"]


def main() -> None:
    # One line per request on stderr would drown a failing test's output.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    print(json.dumps({"endpoint": endpoint}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        command, arguments = words[0], words[1:]
        if command == "ice":
            with lock:
                ice_zones.clear()
                ice_zones.update(arguments)
            print("ok", flush=True)
        elif command == "throttle":
            throttle(int(arguments[0]))
            print("ok", flush=True)
        elif command == "template":
            print(create_launch_template(endpoint, arguments[0]), flush=True)
        elif command == "calls":
            with lock:
                print(json.dumps(calls_by_zone), flush=True)
        elif command == "terminate":
            terminate(arguments)
            print("ok", flush=True)
        elif command == "instances":
            print(json.dumps(all_instances()), flush=True)
        elif command == "auth":
            print(json.dumps(switch_auth_on(endpoint)), flush=True)
        elif command == "quit":
            break
        else:
            print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
    server.stop()


if __name__ == "__main__":
    main()
