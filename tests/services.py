"""Real PostgreSQL and Redis for the test suite.

Resolution order, for each service:
1. `OCS_TEST_PG_DSN` / `OCS_TEST_REDIS_URL` when set;
2. the local server on its default port when it answers;
3. a throwaway server started from the installed binaries (initdb/pg_ctl,
   redis-server) in a temporary directory, stopped at the end of the run.
If none of that works the tests fail with the packages to install: these
tests are never skipped.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import asyncpg
import redis

from bench.ports import free_port

PG_HINT = ("no PostgreSQL available: set OCS_TEST_PG_DSN, run a server on 127.0.0.1:5432, "
           "or install the server binaries (Debian: apt-get install postgresql)")
REDIS_HINT = ("no Redis available: set OCS_TEST_REDIS_URL, run a server on 127.0.0.1:6379, "
              "or install the server binary (Debian: apt-get install redis-server)")


class ServiceUnavailable(RuntimeError):
    pass




def _pg_answers(dsn: str) -> bool:
    async def probe():
        conn = await asyncpg.connect(dsn, timeout=3)
        await conn.close()
    try:
        asyncio.run(probe())
        return True
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return False


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class ThrowawayPostgres:
    """A PostgreSQL server in a temporary directory. `settings` go into its
    postgresql.conf; with `standby_of` (another one's port) its data is a base
    backup of that server and it starts as its streaming standby."""

    def __init__(self, settings: dict[str, str] | None = None, standby_of: int | None = None):
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not (initdb and pg_ctl):
            raise ServiceUnavailable(PG_HINT)
        self.dir = tempfile.mkdtemp(prefix="ocs-pg-")
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root; run it as the postgres user
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise ServiceUnavailable(PG_HINT + " (as root, a 'postgres' user is needed)")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.pg_ctl, self.data = pg_ctl, os.path.join(self.dir, "data")
        if standby_of is None:
            subprocess.run(self.prefix + [initdb, "-D", self.data, "-A", "trust",
                                          "-U", "postgres"], check=True, capture_output=True)
            with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
                conf.writelines(f"{k} = '{v}'\n" for k, v in (settings or {}).items())
            self.start()
        else:
            self.follow(standby_of)
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        subprocess.run(self.prefix + [self.pg_ctl, "-D", self.data, "-w", "-l",
                                      os.path.join(self.dir, "log"), "-o",
                                      f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                                      "-c fsync=on", "start"], check=True, capture_output=True)

    def follow(self, primary_port: int) -> None:
        """Start afresh as the streaming standby of the server on `primary_port`
        (any data here is thrown away, as a failed primary's is)."""
        shutil.rmtree(self.data, ignore_errors=True)
        subprocess.run(self.prefix + [_pg_bin("pg_basebackup"), "-h", "127.0.0.1",
                                      "-p", str(primary_port), "-U", "postgres", "-D", self.data,
                                      "-R", "-X", "stream", "-c", "fast"], check=True,
                       capture_output=True)
        self.start()

    def kill(self) -> None:
        """Gone at once, as a crashed host: no checkpoint, clients cut."""
        subprocess.run(self.prefix + [self.pg_ctl, "-D", self.data, "-m", "immediate", "stop"],
                       check=True, capture_output=True)

    def promote(self) -> None:
        subprocess.run(self.prefix + [self.pg_ctl, "-D", self.data, "-w", "promote"],
                       check=True, capture_output=True)

    def stop(self):
        subprocess.run(self.prefix + [self.pg_ctl, "-D", self.data, "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class ReplicatedPostgres:
    """A primary and its standby, as Patroni keeps them: replication synchronous (a
    COMMIT returns once the standby has it), and a failover that kills the
    primary, promotes the standby and makes the old primary, its data thrown
    away, the new one's standby. `dsn` names both hosts, the standby first."""

    def __init__(self):
        self.primary = ThrowawayPostgres({"synchronous_standby_names": "*"})
        self.standby = ThrowawayPostgres(standby_of=self.primary.port)
        self.dsn = (f"postgresql://postgres@127.0.0.1:{self.standby.port},"
                    f"127.0.0.1:{self.primary.port}/postgres")

    def fail_over(self) -> None:
        self.primary.kill()
        self.standby.promote()
        self.primary, self.standby = self.standby, self.primary
        self.standby.follow(self.primary.port)

    def stop(self) -> None:
        self.standby.stop()
        self.primary.stop()


def make_certificates(directory, leaves: dict[str, tuple[str, str]]) -> None:
    """A test CA (ca.pem, ca.key) in `directory`, made with openssl, and for each
    name of `leaves` a certificate it signed, NAME.pem and NAME.key, with the
    (common name, subjectAltName) given."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise ServiceUnavailable("openssl is needed to make test certificates "
                                 "(Debian: apt-get install openssl)")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True,
                       timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=ocs test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    for name, (common_name, alt) in leaves.items():
        run("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-subj", f"/CN={common_name}", "-addext", f"subjectAltName={alt}",
            "-CA", "ca.pem", "-CAkey", "ca.key")


class RedisTLS:
    """A test CA with a certificate for the Redis servers (at 127.0.0.1) and one for
    their clients (Redis asks clients for one by default); and the arguments
    that redis-server, redis-cli, redis-py and ocsd's [redis] section take to
    use them."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ocs-redis-tls-")
        make_certificates(self.dir, {"server": ("redis server", "IP:127.0.0.1,DNS:localhost"),
                                     "client": ("ocsd", "DNS:ocsd")})
        self.ca, self.cert, self.key = (os.path.join(self.dir, n)
                                        for n in ("ca.pem", "client.pem", "client.key"))

    def server_args(self, port: int) -> list[str]:
        """A server (or Sentinel) taking only TLS on `port`, and using TLS to its
        primary and the cluster bus."""
        server = os.path.join(self.dir, "server")
        return ["--port", "0", "--tls-port", str(port), "--tls-cert-file", server + ".pem",
                "--tls-key-file", server + ".key", "--tls-ca-cert-file", self.ca,
                "--tls-replication", "yes", "--tls-cluster", "yes"]

    def client(self) -> dict:
        """redis-py's arguments beside a rediss:// URL."""
        return {"ssl_ca_certs": self.ca, "ssl_certfile": self.cert, "ssl_keyfile": self.key}

    def client_by_address(self) -> dict:
        """redis-py's arguments for a client made from a host and port."""
        return {"ssl": True, **self.client()}

    def cli(self) -> list[str]:
        return ["--tls", "--cacert", self.ca, "--cert", self.cert, "--key", self.key]

    def config(self) -> dict:
        """ocsd's [redis] keys (beside a rediss:// url)."""
        return {"tls_ca": self.ca, "tls_certificate": self.cert, "tls_key": self.key}

    def stop(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _redis(url: str, tls: RedisTLS | None = None, **options) -> redis.Redis:
    """A redis-py client of the server at `url` (TLS with `tls`)."""
    return redis.Redis.from_url(url, **(tls.client() if tls else {}), **options)


class ThrowawayRedis:
    """A Redis server keeping nothing on disk; with `replica_of` (a port), the
    replica of that one, returned once it holds the primary's data. With `tls`,
    it takes only TLS connections."""

    def __init__(self, port: int | None = None, replica_of: int | None = None,
                 tls: RedisTLS | None = None):
        binary = shutil.which("redis-server")
        if not binary:
            raise ServiceUnavailable(REDIS_HINT)
        self.tls = tls
        self.dir = tempfile.mkdtemp(prefix="ocs-redis-")
        self.port = port or free_port()
        follow = ["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else []
        listen = tls.server_args(self.port) if tls else ["--port", str(self.port)]
        self.proc = subprocess.Popen(
            [binary, *listen, "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--repl-diskless-sync-delay", "0",
             *follow], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _redis_answers(self.url, tls) and (not replica_of or self._in_sync()):
                return
            time.sleep(0.05)
        self.stop()
        raise ServiceUnavailable(f"redis-server did not start on port {self.port}")

    def _in_sync(self) -> bool:
        client = _redis(self.url, self.tls, socket_timeout=2)
        try:
            return client.info("replication").get("master_link_status") == "up"
        finally:
            client.close()

    def stop(self):
        """Stop it (if a test has not killed it already) and remove its directory."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_until(done, what: str, within: float = 30.0) -> None:
    """Poll `done()` until it is true; fail with `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.05)
    raise AssertionError(what)


class SentinelRedis:
    """A Redis primary, its replica and a Sentinel watching them (quorum 1), as an
    operator runs Redis for several ocsd nodes. `fail_over` kills the primary,
    waits for the Sentinel to promote the replica, and starts the old primary
    again, empty, as the new one's replica."""

    MASTER = "ocs-primary"

    def __init__(self, password: str | None = None, tls: RedisTLS | None = None):
        self.password = password  # the Sentinel's own (requirepass)
        self.tls = tls
        self.primary = ThrowawayRedis(tls=tls)
        self.replica = ThrowawayRedis(replica_of=self.primary.port, tls=tls)
        self.sentinel_port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ocs-sentinel-")
        conf = os.path.join(self.dir, "sentinel.conf")
        with open(conf, "w") as fh:  # the Sentinel rewrites this file as it learns
            fh.write(f"bind 127.0.0.1\ndir {self.dir}\n"
                     f"sentinel monitor {self.MASTER} 127.0.0.1 {self.primary.port} 1\n"
                     f"sentinel down-after-milliseconds {self.MASTER} 500\n"
                     f"sentinel failover-timeout {self.MASTER} 2000\n"
                     + (f"requirepass {password}\n" if password else ""))
        listen = tls.server_args(self.sentinel_port) if tls else \
            ["--port", str(self.sentinel_port)]
        self.proc = subprocess.Popen([shutil.which("redis-server"), conf, "--sentinel",
                                      *listen],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.sentinel = f"127.0.0.1:{self.sentinel_port}"
        wait_until(lambda: self.primary_port() == self.primary.port and self._replicas() == 1,
                   "the Sentinel did not see the primary and its replica")

    def _ask(self, *command):
        tls = self.tls.client_by_address() if self.tls else {}
        client = redis.Redis(port=self.sentinel_port, socket_timeout=2, decode_responses=True,
                             password=self.password, **tls)
        try:
            return client.execute_command(*command)
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()

    def primary_port(self) -> int | None:
        """The primary's port as clients are told it (SENTINEL MASTER, which changes
        once a failover is complete, unlike GET-MASTER-ADDR-BY-NAME)."""
        fields = self._ask("SENTINEL", "MASTER", self.MASTER)  # a dict, parsed by redis-py
        if not fields or "s_down" in fields.get("flags", ""):
            return None
        return int(fields["port"])

    def _replicas(self) -> int:
        replicas = self._ask("SENTINEL", "REPLICAS", self.MASTER) or []
        return sum(1 for r in replicas if "s_down" not in str(r))

    def fail_over(self) -> None:
        old, new = self.primary, self.replica
        old.proc.kill()
        old.proc.wait(10)
        wait_until(lambda: self.primary_port() == new.port,
                   "the Sentinel did not promote the replica")
        shutil.rmtree(old.dir, ignore_errors=True)
        self.primary, self.replica = new, ThrowawayRedis(old.port, replica_of=new.port,
                                                         tls=self.tls)
        wait_until(lambda: self._replicas() == 1, "the Sentinel did not see the new replica")

    def swap_by_hand(self) -> None:
        """The replica made primary and the primary its replica with REPLICAOF, by
        hand, and the Sentinel told afresh which one to watch. Unlike the
        Sentinel's own switchover (which kills the clients of the server it
        demotes), the clients' connections to the old primary stay open."""
        old, new = self.primary, self.replica
        for server, command in ((new, ("REPLICAOF", "NO", "ONE")),
                                (old, ("REPLICAOF", "127.0.0.1", str(new.port)))):
            client = _redis(server.url, self.tls, socket_timeout=2)
            try:
                client.execute_command(*command)
            finally:
                client.close()
        self._ask("SENTINEL", "REMOVE", self.MASTER)
        self._ask("SENTINEL", "MONITOR", self.MASTER, "127.0.0.1", new.port, 1)
        self.primary, self.replica = new, old
        wait_until(lambda: self.primary_port() == new.port and old._in_sync(),
                   "the swap did not settle")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        for server in (self.primary, self.replica):
            server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ClusterRedis:
    """A Redis Cluster of three primaries (and `replicas` replicas of each), each a
    throwaway server with cluster mode on, its slots assigned by `redis-cli
    --cluster create`."""

    def __init__(self, replicas: int = 0, tls: RedisTLS | None = None):
        self.tls = tls
        size = 3 * (1 + replicas)
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if not (binary and cli):
            raise ServiceUnavailable(REDIS_HINT)
        self.dir = tempfile.mkdtemp(prefix="ocs-redis-cluster-")
        ports = set()
        while len(ports) < 2 * size:  # each server's port and its cluster bus port
            ports.add(free_port())
        ports = sorted(ports)
        self.ports, bus = ports[:size], ports[size:]
        self.procs = []
        for port, bus_port in zip(self.ports, bus):
            node_dir = os.path.join(self.dir, str(port))
            os.mkdir(node_dir)
            listen = tls.server_args(port) if tls else ["--port", str(port)]
            self.procs.append(subprocess.Popen(
                [binary, *listen, "--cluster-port", str(bus_port),
                 "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", node_dir,
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "2000", "--repl-diskless-sync-delay", "0"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.nodes = [f"127.0.0.1:{port}" for port in self.ports]
        try:
            wait_until(lambda: all(_redis_answers(self._url(n), tls) for n in self.nodes),
                       "the cluster's servers did not start", within=10)
            subprocess.run([cli, *(tls.cli() if tls else []), "--cluster", "create",
                            *self.nodes, "--cluster-yes",
                            "--cluster-replicas", str(replicas)],
                           check=True, capture_output=True, timeout=30)
            wait_until(lambda: self._ok(replicas_in_sync=True),
                       "the cluster did not reach cluster_state:ok")
        except BaseException:
            self.stop()
            raise

    def _url(self, node: str) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{node}/0"

    def kill_primary_of(self, key: str) -> str:
        """Kill the primary serving `key`'s slot; its replica takes over. Returns the
        killed node."""
        tls = self.tls.client_by_address() if self.tls else {}
        client = redis.RedisCluster(startup_nodes=[redis.cluster.ClusterNode(
            "127.0.0.1", p) for p, proc in zip(self.ports, self.procs) if proc.poll() is None],
            **tls)
        try:
            node = client.get_node_from_key(key)
        finally:
            client.close()
        victim = self.procs[self.ports.index(int(node.port))]
        victim.kill()
        victim.wait(10)
        return f"{node.host}:{node.port}"

    def _ok(self, replicas_in_sync: bool = False) -> bool:
        for node, proc in zip(self.nodes, self.procs):
            if proc.poll() is not None:
                continue
            client = _redis(self._url(node), self.tls, socket_timeout=2)
            try:
                if client.cluster("info").get("cluster_state") != "ok":
                    return False
                if replicas_in_sync:
                    replication = client.info("replication")
                    if replication.get("role") == "slave" and \
                            replication.get("master_link_status") != "up":
                        return False
            except (redis.RedisError, OSError):
                return False
            finally:
                client.close()
        return True

    def wait_replicated(self) -> None:
        """Until every primary's replica has all it was sent (WAIT)."""
        for node, proc in zip(self.nodes, self.procs):
            client = _redis(self._url(node), self.tls, socket_timeout=6)
            try:
                if client.info("replication").get("role") == "master":
                    assert client.execute_command("WAIT", 1, 5000) == 1, node
            finally:
                client.close()

    def settled(self) -> None:
        wait_until(self._ok, "the cluster did not recover", within=30)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _redis_answers(url: str, tls: RedisTLS | None = None) -> bool:
    try:
        client = _redis(url, tls, socket_timeout=2, socket_connect_timeout=2)
        ok = client.ping()
        client.close()
        return bool(ok)
    except (redis.RedisError, OSError):
        return False


def find_postgres():
    """(dsn, stopper or None)."""
    dsn = os.environ.get("OCS_TEST_PG_DSN")
    if dsn:
        if not _pg_answers(dsn):
            raise ServiceUnavailable(f"OCS_TEST_PG_DSN={dsn} does not answer")
        return dsn, None
    for local in ("postgresql://postgres@127.0.0.1:5432/postgres",
                  "postgresql://postgres@127.0.0.1:5432/test"):
        if _pg_answers(local):
            return local, None
    server = ThrowawayPostgres()
    return server.dsn, server.stop


def find_redis():
    url = os.environ.get("OCS_TEST_REDIS_URL")
    if url:
        if not _redis_answers(url):
            raise ServiceUnavailable(f"OCS_TEST_REDIS_URL={url} does not answer")
        return url, None
    if _redis_answers("redis://127.0.0.1:6379/0"):
        return "redis://127.0.0.1:6379/0", None
    server = ThrowawayRedis()
    return server.url, server.stop
