"""The EC2 test set-up: libcloud's stock EC2 driver against moto's EC2 server, through the tests' proxy.

What is real here:
  * moto's EC2 server (moto_server 5.2.5 from .venv-moto, made by `make test`): a real HTTP API
    server that keeps VPCs, subnets, images and instances, with EC2's query API and XML answers;
  * libcloud's own EC2 driver, unmodified: ``get_driver("ec2")(key, secret, region="us-east-1",
    host="127.0.0.1", port=<proxy port>, secure=False, signature_version="4")``;
  * OpenSSH's sshd, listening on the loopback addresses moto gives instances in the subnet
    127.0.8.0/24 (127.0.8.4, .5, ...), so an instance's private IP really answers SSH.
What the proxy (tests/services.py: Ec2Proxy) changes, and nothing else: moto's XML namespace into
the one libcloud expects (and none on error answers, so libcloud reads the error code), plus the
faults a test injects (quota, image and API errors, delays). One moto server per module; each test
resets it.
"""
import ipaddress
import socket
import subprocess

import pytest
import requests
from libcloud.compute.drivers.ec2 import EC2NodeDriver, EC2Response
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState

from tests.services import (
    Ec2Proxy,
    ec2_driver,
    moto_server,
    moto_server_binary,
    prepare_ec2_world,
    sshd_server,
    subnet_host_addresses,
)


@pytest.fixture(scope="module")
def moto_url():
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def proxy(moto_url):
    with Ec2Proxy(moto_url) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with sshd_server(tmp_path_factory.mktemp("sshd"), addresses=subnet_host_addresses("127.0.8.0/24")) as server:
        yield server


@pytest.fixture
def world(proxy):
    proxy.clear()
    world = prepare_ec2_world(proxy.url)
    proxy.clear()  # count only the test's own requests
    yield world
    proxy.clear()


def _size(driver):
    return next(size for size in driver.list_sizes() if size.id == "t2.micro")


def _image(driver, world):
    return next(image for image in driver.list_images(ex_filters={"name": "*ubuntu*"}) if image.id == world.image_id)


def _ssh(sshd, address: str, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-i", str(sshd.key_file), "-p", str(sshd.port), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
         "-o", "LogLevel=ERROR", f"{sshd.user}@{address}", command],
        capture_output=True, text=True, timeout=30, check=False)


def test_stock_driver_lists_moto_images(world):
    driver = world.driver()
    assert type(driver) is get_driver("ec2") is EC2NodeDriver
    assert driver.connection.responseCls is EC2Response  # no test subclass anywhere
    images = driver.list_images(ex_filters={"name": "*ubuntu*"})
    assert images and all("ubuntu" in image.name for image in images)
    assert world.image_id in {image.id for image in images}
    assert world.vpc_id.startswith("vpc-") and world.subnet_id.startswith("subnet-")
    assert [subnet.id for subnet in driver.ex_list_subnets() if subnet.id == world.subnet_id]


def test_without_the_proxy_libcloud_misreads_moto(world, moto_url):
    """Why the proxy exists: moto 5.2's namespace is not libcloud's, so libcloud finds nothing."""
    assert ec2_driver(moto_url).list_images(ex_filters={"name": "*ubuntu*"}) == []
    assert world.driver().list_images(ex_filters={"name": "*ubuntu*"})


def test_node_runs_on_loopback_answers_ssh_and_terminates(world, sshd):
    driver = world.driver()
    node = driver.create_node(name="worker-1", size=_size(driver), image=_image(driver, world),
                              ex_metadata={"prominence-cloud": "moto", "prominence-node": "1"},
                              **world.create_options())
    assert node.state == NodeState.PENDING
    [(running, addresses)] = driver.wait_until_running([node], wait_period=0.2, timeout=30,
                                                       ssh_interface="private_ips")
    assert running.id == node.id and running.state == NodeState.RUNNING
    [address] = addresses
    assert ipaddress.ip_address(address) in ipaddress.ip_network(world.subnet_cidr)
    assert address in sshd.addresses

    assert _ssh(sshd, address, "true").returncode == 0
    reached = _ssh(sshd, address, "echo $SSH_CONNECTION")
    assert reached.returncode == 0, reached.stderr
    assert reached.stdout.split()[2:] == [address, str(sshd.port)]  # the server side of the connection

    [listed] = [n for n in driver.list_nodes() if n.id == node.id]
    assert listed.extra["tags"] == {"Name": "worker-1", "prominence-cloud": "moto", "prominence-node": "1"}
    assert listed.extra["subnet_id"] == world.subnet_id

    assert driver.destroy_node(listed) is True
    [gone] = [n for n in driver.list_nodes() if n.id == node.id]
    assert gone.state == NodeState.TERMINATED


def test_moto_assigns_private_ips_in_order(world):
    driver = world.driver()
    size, image = _size(driver), _image(driver, world)
    nodes = [driver.create_node(name=f"n{i}", size=size, image=image, **world.create_options()) for i in range(3)]
    assert [node.private_ips for node in nodes] == [[a] for a in subnet_host_addresses(world.subnet_cidr, 3)]


@pytest.mark.parametrize(("code", "status"), [("InstanceLimitExceeded", 400), ("VcpuLimitExceeded", 400),
                                              ("InvalidAMIID.NotFound", 400), ("InternalError", 500)])
def test_injected_fault_surfaces_in_libcloud(world, proxy, code, status):
    driver = world.driver()
    size, image = _size(driver), _image(driver, world)
    proxy.fail("RunInstances", code, f"injected {code}", status=status, times=1)
    with pytest.raises(Exception) as raised:
        driver.create_node(name="refused", size=size, image=image, **world.create_options())
    assert code in str(raised.value) and f"injected {code}" in str(raised.value)
    assert not driver.list_nodes()  # moto never saw it
    node = driver.create_node(name="accepted", size=size, image=image, **world.create_options())  # times=1: over
    assert proxy.calls["RunInstances"] == 2
    assert [n.id for n in driver.list_nodes()] == [node.id]


def test_fault_without_times_lasts_until_clear(world, proxy):
    driver = world.driver()
    size, image = _size(driver), _image(driver, world)
    proxy.fail("RunInstances", "VcpuLimitExceeded", "You have requested more vCPU capacity than your limit")
    for _ in range(3):
        with pytest.raises(Exception, match="VcpuLimitExceeded"):
            driver.create_node(name="refused", size=size, image=image, **world.create_options())
    proxy.clear()
    assert proxy.calls["RunInstances"] == 0  # clear() resets the counts too
    driver.create_node(name="accepted", size=size, image=image, **world.create_options())
    assert proxy.calls["RunInstances"] == 1


def test_moto_errors_carry_their_code(world):
    """moto's own error answers reach libcloud with code and message (the proxy drops their namespace)."""
    with pytest.raises(Exception, match=r"InvalidVpcID\.NotFound"):
        world.driver().ex_create_subnet("vpc-00000000", "127.0.9.0/24", world.availability_zone)


def test_delay_makes_a_short_timeout_expire(world, proxy):
    driver = world.driver(timeout=1)
    assert driver.list_nodes() == []
    proxy.delay("DescribeInstances", 5)
    with pytest.raises((requests.exceptions.Timeout, socket.timeout, TimeoutError)):
        driver.list_nodes()
    proxy.clear()  # also ends the pending delay
    assert driver.list_nodes() == []
    assert proxy.calls["DescribeInstances"] == 1


def test_sshd_refuses_non_loopback_addresses(tmp_path):
    for address in ("0.0.0.0", "10.0.0.1", "::1"):
        with pytest.raises(ValueError), sshd_server(tmp_path, addresses=[address]):
            pass


def test_missing_moto_server_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMINENCE_TEST_MOTO_SERVER", str(tmp_path / "no-moto_server"))
    with pytest.raises(RuntimeError, match="make test"):
        moto_server_binary()
