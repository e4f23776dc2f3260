"""The deployment files, checked without Docker: docker-compose.yml, the .env the README
makes, docker/Dockerfile and .dockerignore.

Docker is not needed (nor run): the compose file is read by a strict reader for the small
YAML subset it is written in (cross-checked against PyYAML when that is installed), its
``${...}`` references are filled as compose would from a ``.env`` made by the README's own
command (no ``.env`` ships: a secret in git is public), and every node's command
line is parsed by twistd's real ``ServerOptions`` and ``raftnode`` ``Options`` -- with the
three checks that touch the host (free ports, the data directory, importing the app)
replaced by recorders -- so the deployment cannot drift from the plugin.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from txraft.tools.localcluster import REPO_ROOT
from txraft.plugins import raftnode

from tests.fakes import set_environ

try:
    import yaml
except ImportError:  # not a dependency (yet): the strict reader below does the work
    yaml = None

COMPOSE_PATH = os.path.join(REPO_ROOT, "docker-compose.yml")
README_PATH = os.path.join(REPO_ROOT, "README.md")
DEPLOY_DOC_PATH = os.path.join(REPO_ROOT, "docs", "deploy.md")
DOCKERFILE_PATH = os.path.join(REPO_ROOT, "docker", "Dockerfile")
DOCKERIGNORE_PATH = os.path.join(REPO_ROOT, ".dockerignore")

SERVICES = ["node%d" % i for i in range(1, 6)]  # the founding five
SPARE = "node6"  # joins them with --join, under the "spare" profile
ALL_SERVICES = SERVICES + [SPARE]
DATA_DIR = "/data"


# -- a strict reader for the YAML subset of docker-compose.yml ---------------------------


class StrictYAMLError(ValueError):
    pass


# Plain (unquoted) scalars are limited to words that mean the same in YAML 1.1 and 1.2
# and to every tool: no ':' (so "5001:5001" -- a base-60 integer to YAML 1.1 readers --
# must be quoted), no '$', no flow or anchor characters, no yes/no/on/off.
_PLAIN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./=-]*\Z")
_AMBIGUOUS = {"yes", "no", "on", "off", "y", "n", "null", "~", "none"}
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def _strip_comment(text: str, number: int) -> str:
    quote = None
    for i, char in enumerate(text):
        if quote:
            if char == "\\" and quote == '"':
                continue
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] == " "):
            return text[:i].rstrip()
    if quote:
        raise StrictYAMLError("line %d: unterminated quoted string" % number)
    return text.rstrip()


def _scalar(text: str, number: int) -> Any:
    if text.startswith('"'):
        body = text[1:-1]
        if len(text) < 2 or not text.endswith('"') or re.search(r'(?<!\\)"', body):
            raise StrictYAMLError("line %d: bad double-quoted string %s" % (number, text))
        if re.search(r"\\[^\\\"]", body):
            raise StrictYAMLError("line %d: only \\\\ and \\\" escapes are allowed" % number)
        return body.replace('\\"', '"').replace("\\\\", "\\")
    if text.startswith("'"):
        body = text[1:-1]
        if len(text) < 2 or not text.endswith("'") or re.search(r"(?<!')'(?!')", body):
            raise StrictYAMLError("line %d: bad single-quoted string %s" % (number, text))
        return body.replace("''", "'")
    if text in ("true", "false"):
        return text == "true"
    if text.lower() in _AMBIGUOUS:
        raise StrictYAMLError("line %d: %r is ambiguous in YAML; quote it" % (number, text))
    if text[:1].isdigit():
        if not text.isdigit() or (len(text) > 1 and text[0] == "0"):
            raise StrictYAMLError("line %d: %r looks like a number; quote it" % (number, text))
        return int(text)
    if not _PLAIN.match(text):
        raise StrictYAMLError("line %d: %r must be quoted" % (number, text))
    return text


def load_strict_yaml(text: str) -> Any:
    """Block mappings, block sequences of scalars, quoted and plain scalars, comments.

    Anything else -- flow collections, anchors, tags, multi-line strings, tabs, mappings
    inside sequences, duplicate keys, odd indentation -- is refused with the line number,
    so the subset can only mean one thing.
    """
    lines: List[Tuple[int, int, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw:
            raise StrictYAMLError("line %d: tab character" % number)
        content = _strip_comment(raw, number)
        if not content.strip():
            continue
        indent = len(content) - len(content.lstrip(" "))
        lines.append((number, indent, content.strip()))
    if not lines:
        raise StrictYAMLError("empty document")
    if lines[0][1] != 0:
        raise StrictYAMLError("line %d: the document must start at column 0" % lines[0][0])
    value, end = _block(lines, 0, 0)
    if end != len(lines):
        raise StrictYAMLError("line %d: unexpected indentation" % lines[end][0])
    return value


def _block(lines, start: int, indent: int) -> Tuple[Any, int]:
    if lines[start][2].startswith("- ") or lines[start][2] == "-":
        return _sequence(lines, start, indent)
    return _mapping(lines, start, indent)


def _sequence(lines, i: int, indent: int) -> Tuple[List[Any], int]:
    items = []
    while i < len(lines) and lines[i][1] == indent:
        number, _, content = lines[i]
        if not content.startswith("- "):
            raise StrictYAMLError("line %d: a mapping key among sequence items" % number)
        item = content[2:].strip()
        if not item or item[0] in "[{&*!|>-":
            raise StrictYAMLError("line %d: only scalar sequence items are allowed" % number)
        if re.match(r"[^\"']*:( |$)", item):
            raise StrictYAMLError("line %d: mappings inside sequences are not allowed" % number)
        items.append(_scalar(item, number))
        i += 1
    return items, i


def _mapping(lines, i: int, indent: int) -> Tuple[Dict[str, Any], int]:
    mapping: Dict[str, Any] = {}
    while i < len(lines) and lines[i][1] == indent:
        number, _, content = lines[i]
        if content.startswith("-"):
            raise StrictYAMLError("line %d: a sequence item among mapping keys" % number)
        key, sep, rest = content.partition(":")
        if not sep or (rest and not rest.startswith(" ")):
            raise StrictYAMLError("line %d: expected 'key: value' or 'key:'" % number)
        if not _KEY.match(key):
            raise StrictYAMLError("line %d: key %r must be a plain word" % (number, key))
        if key in mapping:
            raise StrictYAMLError("line %d: duplicate key %r" % (number, key))
        rest = rest.strip()
        i += 1
        if rest:
            if rest[0] in "[{&*!|>":
                raise StrictYAMLError("line %d: flow, anchors, tags and block scalars are "
                                      "not allowed" % number)
            mapping[key] = _scalar(rest, number)
        elif i < len(lines) and lines[i][1] > indent:
            mapping[key], i = _block(lines, i, lines[i][1])
        else:
            mapping[key] = None
    if i < len(lines) and lines[i][1] > indent:
        raise StrictYAMLError("line %d: unexpected indentation" % lines[i][0])
    return mapping, i


# -- compose's view of the files ----------------------------------------------------------


def read_env_file(path: str) -> Dict[str, str]:
    """``KEY=value`` lines of a compose ``.env`` file (comments and blanks skipped)."""
    env = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep or not re.match(r"[A-Z_][A-Z0-9_]*\Z", key):
                raise ValueError("%s line %d: not KEY=value" % (path, number))
            env[key] = value
    return env


_REFERENCE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\})")


def interpolate(value: Any, env: Dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``, recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match):
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        current = env.get(name)
        unset = current is None or (current == "" and operator in (":-", ":?"))
        if operator in ("-", ":-") and unset:
            return argument
        if operator in ("?", ":?") and unset:
            raise KeyError("required variable %s is missing: %s" % (name, argument))
        return current or ""

    result = _REFERENCE.sub(replace, value)
    if "$" in _REFERENCE.sub("", value):
        raise ValueError("unsupported $ syntax in %r" % (value,))
    return result


def parse_port(spec: str) -> Tuple[str, int, int, str]:
    """``[ip:]host:container[/protocol]`` to (ip, host port, container port, protocol)."""
    spec, _, protocol = spec.partition("/")
    parts = spec.split(":")
    if len(parts) == 2:
        parts.insert(0, "0.0.0.0")
    ip, host, container = parts
    return ip, int(host), int(container), protocol or "tcp"


def option_value(command: List[str], option: str) -> str:
    values = [command[i + 1] for i, word in enumerate(command[:-1]) if word == option]
    if len(values) != 1:
        raise AssertionError("%s appears %d times in %r" % (option, len(values), command))
    return values[0]


# -- the Dockerfile and .dockerignore -----------------------------------------------------


def read_dockerfile(path: str) -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions = []
    current = ""
    with open(path) as f:
        for line in f:
            stripped = line.strip()
            if stripped.startswith("#") or (not stripped and not current):
                continue
            if stripped.endswith("\\"):
                current += stripped[:-1] + " "
                continue
            current += stripped
            instruction, _, arguments = current.partition(" ")
            instructions.append((instruction.upper(), arguments.strip()))
            current = ""
    if current:
        raise ValueError("%s ends in a continuation line" % path)
    return instructions


def _ignore_regex(pattern: str) -> "re.Pattern[str]":
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i:end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    """Docker's rule: the last pattern matching a path or one of its parent directories
    decides; a ``!`` pattern puts the path back into the context."""

    def __init__(self, text: str):
        self.rules = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            self.rules.append((negate, _ignore_regex(pattern)))

    def included(self, path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        included = True
        for negate, regex in self.rules:
            if any(regex.match(prefix) for prefix in prefixes):
                included = negate
        return included


# -- helpers ------------------------------------------------------------------------------


def load_compose() -> Dict[str, Any]:
    with open(COMPOSE_PATH) as f:
        return load_strict_yaml(f.read())


def compose_with_env(env: Dict[str, str]) -> Dict[str, Any]:
    return interpolate(load_compose(), env)


def make_env_command() -> str:
    """The README's command that makes ``.env`` (the first line of its compose section)."""
    with open(README_PATH) as f:
        section = f.read().split("\n## A 5-node cluster with Docker Compose", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    first = block.splitlines()[0]
    assert first.startswith('echo "TXRAFT_SECRET='), first
    return first


def run_make_env_command() -> Dict[str, str]:
    """Run the README's command, as a shell would, in an empty directory (``python3``
    being this Python); the ``.env`` it made."""
    folder = tempfile.mkdtemp(prefix="txraft-env-")
    try:
        bin_dir = os.path.join(folder, "bin")
        os.mkdir(bin_dir)
        os.symlink(sys.executable, os.path.join(bin_dir, "python3"))
        env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
        subprocess.run(["sh", "-c", make_env_command()], cwd=folder, env=env, check=True,
                       timeout=60)
        return read_env_file(os.path.join(folder, ".env"))
    finally:
        shutil.rmtree(folder)


_made_env: List[Dict[str, str]] = []


def made_env() -> Dict[str, str]:
    """The ``.env`` the README's command makes (made once per test run)."""
    if not _made_env:
        _made_env.append(run_make_env_command())
    return dict(_made_env[0])


class RecordingHostChecks:
    """Replaces the raftnode checks that touch the host, recording what they were asked."""

    def __init__(self, test: SynchronousTestCase):
        self.ports: List[Tuple[str, str, int]] = []
        self.data_dirs: List[str] = []
        self.apps: List[str] = []
        kinds = {socket.SOCK_DGRAM: "udp", socket.SOCK_STREAM: "tcp"}
        test.patch(raftnode, "_check_port_free",
                   lambda kind, host, port, label: self.ports.append((kinds[kind], host, port)))
        test.patch(raftnode.Options, "_check_data_dir",
                   lambda options, path: self._check_data_dir(options, path))
        test.patch(raftnode, "load_application", self._load_application)
        from txraft.runtime import join

        test.patch(join, "load_joined", lambda data_dir: None)  # not the host's /data

    def _check_data_dir(self, options, path: str) -> None:
        self.data_dirs.append(path)
        options["has-log"] = False  # a new volume

    def _load_application(self, name: str) -> object:
        # Only the name: the shop may not be importable in every checkout, and importing
        # it is the app's own tests' business.
        if name not in raftnode.APPLICATIONS and ":" not in name:
            raise raftnode.ConfigError("unknown application %r" % (name,))
        self.apps.append(name)
        return object()


def parse_twistd_command(test: SynchronousTestCase, command: List[str], secret: Optional[str]):
    """Parse ``twistd ... raftnode ...`` as twistd would; return the raftnode Options."""
    from twisted.scripts.twistd import ServerOptions

    test.assertEqual(command[0], "twistd")
    set_environ(test, raftnode.SECRET_ENV, secret)
    config = ServerOptions()
    config.parseOptions(command[1:])
    test.assertEqual(config.subCommand, "raftnode")
    test.assertTrue(config["nodaemon"])
    test.assertEqual(config["pidfile"], "")
    return config.subOptions


# -- tests --------------------------------------------------------------------------------


class StrictYAMLTests(SynchronousTestCase):
    def test_reads_the_subset(self):
        """Mappings, sequences of scalars, quoted and plain scalars, integers, booleans
        and empty values are read as YAML reads them."""
        text = (
            "# comment\n"
            "a:\n"
            "  b: \"x: y # not a comment\"  # a comment\n"
            "  c:\n"
            "    - plain-word\n"
            "    - \"--flag=\"\n"
            "    - 'it''s'\n"
            "  d: 5\n"
            "  e: true\n"
            "  f:\n"
            "g: docker/Dockerfile\n"
        )
        expected = {
            "a": {"b": "x: y # not a comment", "c": ["plain-word", "--flag=", "it's"],
                  "d": 5, "e": True, "f": None},
            "g": "docker/Dockerfile",
        }
        self.assertEqual(load_strict_yaml(text), expected)
        if yaml is not None:
            self.assertEqual(yaml.safe_load(text), expected)

    def test_refuses_what_could_mean_something_else(self):
        """Unquoted port pairs (base 60 in YAML 1.1), yes/no, flow collections, anchors,
        tabs, duplicate keys, mappings in sequences and stray indentation are refused."""
        bad = [
            "ports:\n  - 5001:5001\n",
            "ports:\n  - 22:22/udp\n",
            "init: yes\n",
            "a: [1, 2]\n",
            "a: &anchor\n  b: 1\n",
            "a:\n\tb: 1\n",
            "a: 1\na: 2\n",
            "a:\n  - b: 1\n",
            "a: 1\n  b: 2\n",
            "a: ${X}\n",
            "a: 3.11\n",
            "a: 0755\n",
            "a: \"unterminated\n",
            "a: |\n  text\n",
        ]
        for text in bad:
            self.assertRaises(StrictYAMLError, load_strict_yaml, text)

    def test_compose_file_reads_the_same_with_pyyaml(self):
        """The strict reader and PyYAML agree on docker-compose.yml."""
        if yaml is None:
            raise self.skipTest(
                "PyYAML is not installed (add pyyaml to the test extras): the compose file "
                "is still checked by the strict reader, only this cross-check is skipped"
            )
        with open(COMPOSE_PATH) as f:
            text = f.read()
        self.assertEqual(yaml.safe_load(text), load_strict_yaml(text))


class InterpolationTests(SynchronousTestCase):
    def test_compose_variable_forms(self):
        """${VAR}, ${VAR:-default}, ${VAR:?error} and $$ behave as in compose."""
        env = {"SET": "v", "EMPTY": ""}
        self.assertEqual(interpolate("a${SET}b", env), "avb")
        self.assertEqual(interpolate("${EMPTY:-d}", env), "d")
        self.assertEqual(interpolate("${EMPTY-d}", env), "")
        self.assertEqual(interpolate("${UNSET:-d}", env), "d")
        self.assertEqual(interpolate("$${SET}", env), "${SET}")
        self.assertRaises(KeyError, interpolate, "${UNSET:?needed}", env)
        self.assertRaises(KeyError, interpolate, "${EMPTY:?needed}", env)
        self.assertRaises(ValueError, interpolate, "$SET", env)


class ComposeFileTests(SynchronousTestCase):
    def setUp(self):
        self.raw = load_compose()
        self.env = made_env()
        self.compose = compose_with_env(self.env)
        self.services = self.compose["services"]

    def command(self, name: str) -> List[str]:
        return self.services[name]["command"]

    def port(self, name: str) -> int:
        return int(option_value(self.command(name), "--port"))

    def test_top_level(self):
        """Only services and volumes at the top; no obsolete `version:` key (compose v2
        warns about it and docker-compose >= 1.27 does not need it)."""
        self.assertEqual(sorted(self.raw), ["services", "volumes"])

    def test_five_services_from_one_image_built_once(self):
        """node1..node5 and the spare node6, all `image: txraft:latest` with the same
        build of docker/Dockerfile from the repository root; only the spare has a
        profile, so `docker-compose up` starts the five."""
        self.assertEqual(sorted(self.services), ALL_SERVICES)
        images = {s["image"] for s in self.services.values()}
        self.assertEqual(images, {"txraft:latest"})
        builds = [s.get("build") for s in self.services.values()]
        self.assertEqual(builds, [{"context": ".", "dockerfile": "docker/Dockerfile"}] * 6)
        self.assertEqual({name: s.get("profiles") for name, s in self.services.items()},
                         dict({name: None for name in SERVICES}, node6=["spare"]))
        self.assertTrue(os.path.isfile(os.path.join(REPO_ROOT, builds[0]["dockerfile"])))

    def test_ports_distinct_and_tcp_and_udp_published(self):
        """Node N listens on 500N and publishes it for TCP (HTTP) and UDP (Raft), on the
        same number outside as inside, on loopback unless TXRAFT_PUBLISH_ADDRESS says
        otherwise (with the README's .env and with the secret alone)."""
        for env in (self.env, {"TXRAFT_SECRET": "s"}):
            services = compose_with_env(env)["services"]
            seen = set()
            for i, name in enumerate(ALL_SERVICES, 1):
                port = int(option_value(services[name]["command"], "--port"))
                self.assertEqual(port, 5000 + i)
                published = [parse_port(p) for p in services[name]["ports"]]
                self.assertEqual(
                    sorted(published),
                    [("127.0.0.1", port, port, "tcp"), ("127.0.0.1", port, port, "udp")],
                )
                self.assertNotIn(port, seen)
                seen.add(port)
        public = compose_with_env({"TXRAFT_SECRET": "s", "TXRAFT_PUBLISH_ADDRESS": "0.0.0.0"})
        self.assertEqual(parse_port(public["services"]["node3"]["ports"][1]),
                         ("0.0.0.0", 5003, 5003, "udp"))

    def test_every_node_knows_every_node(self):
        """Every --members lists all five services, by service name, on their own ports,
        and says the same thing on every node."""
        expected = {name: (name, self.port(name), self.port(name)) for name in SERVICES}
        texts = set()
        for name in SERVICES:
            text = option_value(self.command(name), "--members")
            texts.add(text)
            members = raftnode.parse_members(text)
            self.assertEqual(
                {m.node_id: (m.host, m.port, m.http_port) for m in members.values()}, expected
            )
            self.assertEqual(option_value(self.command(name), "--id"), name)
        self.assertEqual(len(texts), 1)

    def test_commands_parse_with_the_real_plugin_options(self):
        """Each service's command is accepted by twistd's ServerOptions and the raftnode
        Options: it is node N on 0.0.0.0:500N of a five-node cluster, keeps its data in
        the volume, runs the shop, and reads the secret compose passes in."""
        secret = self.env["TXRAFT_SECRET"]
        for name in SERVICES:
            checks = RecordingHostChecks(self)
            service = self.services[name]
            env = service["environment"]
            options = parse_twistd_command(self, service["command"], env[raftnode.SECRET_ENV])
            port = self.port(name)
            self.assertEqual(options["node_id"], name)
            self.assertEqual(sorted(options["member_map"]), SERVICES)
            self.assertEqual((options["bind"], options["port"], options["http-port"]),
                             ("0.0.0.0", port, port))
            self.assertEqual(options["data-dir"], DATA_DIR)
            self.assertEqual(options["secret"], secret.encode("utf-8"))
            self.assertEqual(options["app"], "shop")
            self.assertEqual(checks.apps, ["shop"])
            self.assertEqual(checks.data_dirs, [DATA_DIR])
            self.assertEqual(sorted(checks.ports),
                             [("tcp", "0.0.0.0", port), ("udp", "0.0.0.0", port)])
            # What the image's healthcheck asks is this node's HTTP port.
            self.assertEqual(int(env["TXRAFT_HTTP_PORT"]), options["http-port"])
            # The defaults a Docker bridge needs: datagrams that fit its 1500-byte MTU.
            self.assertLessEqual(options["max-datagram"], 1472)

    def test_volumes_named_declared_and_distinct(self):
        """Each node mounts its own declared named volume on the data directory."""
        declared = self.raw["volumes"]
        mounted = []
        for name in ALL_SERVICES:
            volumes = self.services[name]["volumes"]
            self.assertEqual(len(volumes), 1)
            source, _, target = volumes[0].partition(":")
            self.assertEqual(target, DATA_DIR)
            self.assertNotIn("/", source, "a named volume, not a bind mount")
            mounted.append(source)
        self.assertEqual(len(set(mounted)), 6)
        self.assertEqual(sorted(declared), sorted(mounted))

    def test_secret_comes_from_the_environment(self):
        """TXRAFT_SECRET is a required compose variable (no silent empty secret) and the
        value given (in the shell or .env) is what every node gets."""
        for name in ALL_SERVICES:
            raw = self.raw["services"][name]["environment"][raftnode.SECRET_ENV]
            self.assertTrue(raw.startswith("${TXRAFT_SECRET:?"), raw)
            self.assertRaises(KeyError, interpolate, raw, {})
            self.assertRaises(KeyError, interpolate, raw, {"TXRAFT_SECRET": ""})
            self.assertEqual(interpolate(raw, {"TXRAFT_SECRET": "from-shell"}), "from-shell")
        secret = self.env["TXRAFT_SECRET"]
        for name in ALL_SERVICES:
            self.assertEqual(self.services[name]["environment"][raftnode.SECRET_ENV], secret)
        # The secret is never on a command line, where `ps` and `docker inspect` show it.
        for name in ALL_SERVICES:
            self.assertNotIn("--secret-file", self.command(name))
            self.assertNotIn(secret, " ".join(self.command(name)))

    def test_nodes_refuse_a_missing_weak_or_published_secret(self):
        """Were compose to pass no secret, a short one or the value .env once shipped,
        every node would refuse to start: one line on stderr, exit status 2."""
        import io

        published = "local-development-only-not-a-secret-3b9f1c7e"
        for secret, expected in ((None, "needs a secret"), ("0123456789abcde", "fewer than 16"),
                                 (published, "known to anyone")):
            for name in ALL_SERVICES:
                RecordingHostChecks(self)
                stderr = io.StringIO()
                self.patch(raftnode.sys, "stderr", stderr)
                with self.assertRaises(SystemExit) as caught:
                    parse_twistd_command(self, self.services[name]["command"], secret)
                self.assertEqual(caught.exception.code, 2)
                [line] = stderr.getvalue().splitlines()
                if name == SPARE and secret is None:
                    expected_here = "--join needs the cluster secret"
                else:
                    expected_here = expected
                self.assertIn(expected_here, line)

    def test_init_and_restart_policy(self):
        """`init: true` (PID 1 forwards SIGTERM and reaps) and a restart policy that
        brings a crashed node back but respects `docker compose stop`."""
        for name in ALL_SERVICES:
            self.assertIs(self.services[name]["init"], True)
            self.assertEqual(self.services[name]["restart"], "unless-stopped")

    def test_healthcheck_is_the_images(self):
        """No service disables or overrides the image's /ready healthcheck."""
        for name in ALL_SERVICES:
            self.assertNotIn("healthcheck", self.services[name])

    def test_the_spare_joins_the_five(self):
        """node6 parses with the real plugin options as a node that joins: its --join
        names every founding service's HTTP URL (service name, its own port), its Raft
        address is its service name (what the others resolve), it runs the shop on its
        own volume, and no founding node lists it."""
        service = self.services[SPARE]
        checks = RecordingHostChecks(self)
        options = parse_twistd_command(self, service["command"],
                                       service["environment"][raftnode.SECRET_ENV])
        self.assertEqual(options["node_id"], SPARE)
        self.assertEqual(options["join_urls"],
                         ["http://%s:%d" % (name, self.port(name)) for name in SERVICES])
        me = options["member_map"][SPARE]
        self.assertEqual(sorted(options["member_map"]), [SPARE])
        self.assertEqual((me.host, me.port, me.http_port), (SPARE, 5006, 5006))
        self.assertEqual(me.advertise_url, "http://127.0.0.1:5006")
        self.assertEqual((options["bind"], options["data-dir"], options["app"]),
                         ("0.0.0.0", DATA_DIR, "shop"))
        self.assertEqual(sorted(checks.ports), [("tcp", "0.0.0.0", 5006), ("udp", "0.0.0.0", 5006)])
        self.assertEqual(int(service["environment"]["TXRAFT_HTTP_PORT"]), 5006)
        self.assertIsNotNone(options["secret"])
        for name in SERVICES:
            self.assertNotIn(SPARE, option_value(self.command(name), "--members"))

    def test_services_are_identical_but_for_their_number(self):
        """Apart from the node's number, the five services are the same text, so a
        change to one that is not made to all is caught."""
        def normalized(name):
            number = name[-1]
            service = json.loads(json.dumps(self.raw["services"][name]))
            # The members and advertised URLs name every node; take them out before
            # renumbering.
            command = service["command"]
            command[command.index("--advertise-urls") + 1] = "ADVERTISED"
            dumped = json.dumps(service, sort_keys=True)
            dumped = dumped.replace(option_value(self.command(name), "--members"), "MEMBERS")
            return re.sub(r"node%s|500%s" % (number, number), "SELF", dumped)

        self.assertEqual(len({normalized(name) for name in SERVICES}), 1)


class EnvFileTests(SynchronousTestCase):
    """No secret ships: .env is made on each machine by one command, and never committed."""

    def test_the_readme_command_makes_a_good_secret(self):
        """The README's command writes .env with TXRAFT_SECRET, 64 hex digits from
        `secrets` (another each time), which compose and every node accept; docs/deploy.md
        and the compose file give the same command."""
        first, second = made_env(), run_make_env_command()
        self.assertEqual(sorted(first), [raftnode.SECRET_ENV])
        for env in (first, second):
            self.assertRegex(env[raftnode.SECRET_ENV], r"\A[0-9a-f]{64}\Z")
        self.assertNotEqual(first, second)
        command = make_env_command().split("#", 1)[0].strip()
        with open(DEPLOY_DOC_PATH) as f:
            self.assertIn(command, f.read())
        with open(COMPOSE_PATH) as f:
            self.assertIn("#   " + command + "\n", f.read())

    def test_no_env_file_is_committed(self):
        """.env is ignored by git and not in the repository (a value there is public)."""
        with open(os.path.join(REPO_ROOT, ".gitignore")) as f:
            self.assertIn("/.env", f.read().split())
        if shutil.which("git") is None or not os.path.exists(os.path.join(REPO_ROOT, ".git")):
            raise self.skipTest("not a git checkout: only .gitignore is checked")
        tracked = subprocess.run(["git", "ls-files", "--", ".env"], cwd=REPO_ROOT,
                                 capture_output=True, text=True, check=True).stdout
        self.assertEqual(tracked, "")
        ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT)
        self.assertEqual(ignored.returncode, 0)


class DockerfileTests(SynchronousTestCase):
    def setUp(self):
        self.instructions = read_dockerfile(DOCKERFILE_PATH)
        self.names = [name for name, _ in self.instructions]

    def one(self, name: str) -> str:
        found = [arguments for n, arguments in self.instructions if n == name]
        self.assertEqual(len(found), 1, "exactly one %s" % name)
        return found[0]

    def index(self, predicate) -> int:
        for i, (name, arguments) in enumerate(self.instructions):
            if predicate(name, arguments):
                return i
        self.fail("no matching instruction")

    def test_slim_official_python_base(self):
        """FROM the official python image, a -slim variant, Python >= 3.10."""
        base = self.one("FROM")
        args = dict(a.split("=", 1) for n, a in self.instructions if n == "ARG" and "=" in a)
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        match = re.match(r"python:(\d+)\.(\d+)-slim(-\w+)?\Z", image)
        self.assertTrue(match, image)
        self.assertGreaterEqual((int(match.group(1)), int(match.group(2))), (3, 10))

    def test_installs_the_package_and_builds_the_plugin_cache_as_root(self):
        """pip installs the package (not editable), the twistd plugin cache is built in
        the same image, and only then does the image switch to a non-root user."""
        install = self.index(lambda n, a: n == "RUN" and re.search(r"pip install (/src|\.)", a))
        self.assertNotIn(" -e ", self.instructions[install][1])
        cache = self.index(lambda n, a: n == "RUN" and "getPlugins(IPlugin)" in a)
        user = self.index(lambda n, a: n == "USER")
        self.assertLess(install, user)
        self.assertLess(cache, user)
        self.assertIn("twistd raftnode --help", self.instructions[cache][1])

    def test_runs_as_a_non_root_user_owning_the_data_volume(self):
        """USER is neither root nor uid 0, and that uid owns the VOLUME, created before."""
        user = self.one("USER")
        uid = user.split(":")[0]
        self.assertNotIn(uid, ("root", "0"))
        volume = json.loads(self.one("VOLUME"))
        self.assertEqual(volume, [DATA_DIR])
        setup = " ".join(a for n, a in self.instructions if n == "RUN")
        self.assertIn("--uid %s" % uid, setup)
        self.assertIn("chown txraft:txraft %s" % DATA_DIR, setup)
        self.assertLess(self.names.index("RUN"), self.names.index("VOLUME"))

    def test_exposes_tcp_and_udp(self):
        """EXPOSE names the default port for TCP and for UDP, the port of the CMD."""
        exposed = set(self.one("EXPOSE").split())
        port = option_value(json.loads(self.one("CMD")), "--port")
        self.assertEqual(exposed, {"%s/tcp" % port, "%s/udp" % port})

    def test_healthcheck_asks_ready_with_urllib(self):
        """HEALTHCHECK runs Python's urllib (no curl in slim) against /ready on the port
        TXRAFT_HTTP_PORT names, whose default in the image is the CMD's port."""
        healthcheck = self.one("HEALTHCHECK")
        options, _, command = healthcheck.partition("CMD ")
        for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
            self.assertIn(option, options)
        argv = json.loads(command)
        self.assertEqual(argv[:2], ["python", "-c"])
        self.assertIn("urllib.request", argv[2])
        self.assertIn("ProxyHandler({})", argv[2])
        self.assertIn("/ready", argv[2])
        self.assertIn("TXRAFT_HTTP_PORT", argv[2])
        compile(argv[2], "healthcheck", "exec")
        env = " ".join(a for n, a in self.instructions if n == "ENV")
        port = option_value(json.loads(self.one("CMD")), "--port")
        self.assertIn("TXRAFT_HTTP_PORT=%s" % port, env)

    def test_cmd_is_twistd_raftnode_and_parses(self):
        """CMD is `twistd --nodaemon --pidfile= raftnode ...` (exec form), binds 0.0.0.0,
        keeps its data in the volume, and the real options accept it."""
        command = json.loads(self.one("CMD"))
        self.assertEqual(command[:4], ["twistd", "--nodaemon", "--pidfile=", "raftnode"])
        self.assertNotIn("ENTRYPOINT", self.names)
        checks = RecordingHostChecks(self)
        options = parse_twistd_command(self, command, secret=None)
        self.assertEqual(options["bind"], "0.0.0.0")
        self.assertEqual(options["data-dir"], DATA_DIR)
        self.assertEqual(checks.data_dirs, [DATA_DIR])
        self.assertEqual(checks.apps, ["shop"])

    def test_compose_command_extends_the_image_command(self):
        """The compose command is the image's CMD plus this node's identity and peers:
        the image and the compose file say the same thing about everything else."""
        image = json.loads(self.one("CMD"))
        services = load_compose()["services"]
        for name in SERVICES:
            command = services[name]["command"]
            self.assertEqual(command[:4], image[:4])
            for option in ("--bind", "--data-dir", "--app"):
                self.assertEqual(option_value(command, option), option_value(image, option))


class DockerIgnoreTests(SynchronousTestCase):
    def setUp(self):
        with open(DOCKERIGNORE_PATH) as f:
            self.ignore = DockerIgnore(f.read())

    def test_matcher_follows_docker_rules(self):
        """The last matching pattern wins, a directory pattern covers what is below it,
        and ** matches any depth."""
        ignore = DockerIgnore("*\n!pkg/\n**/__pycache__\n!pkg/keep.txt\n")
        self.assertFalse(ignore.included("other.py"))
        self.assertTrue(ignore.included("pkg/a.py"))
        self.assertFalse(ignore.included("pkg/__pycache__/a.pyc"))
        self.assertFalse(ignore.included("pkg/sub/__pycache__/a.pyc"))
        self.assertTrue(ignore.included("pkg/keep.txt"))

    def test_context_has_what_pip_install_needs(self):
        """setup.py (and the README it reads), every module of txraft and the twistd
        drop-in reach the build."""
        for path in ("setup.py", "README.md", "twisted/plugins/txraft_raftnode.py",
                     "txraft/plugins/raftnode.py"):
            self.assertTrue(self.ignore.included(path), path)
        for root, _, files in os.walk(os.path.join(REPO_ROOT, "txraft")):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.relpath(os.path.join(root, name), REPO_ROOT)
                    self.assertTrue(self.ignore.included(path.replace(os.sep, "/")), path)

    def test_context_leaves_out_the_rest(self):
        """Git, tests, benchmarks, caches, local data and the .env secret stay out."""
        for path in (".git/HEAD", ".env", "tests/unit/test_deploy.py", "bench/run.py",
                     "_trial_temp/test.log", "data/n1/raft/log", "cluster-data/n1/node.log",
                     ".hypothesis/examples/x", "venv/bin/python", "docker-compose.yml",
                     "txraft/__pycache__/core.cpython-311.pyc",
                     "twisted/plugins/dropin.cache", "shop/shop.db"):
            self.assertFalse(self.ignore.included(path), path)


class DocumentationTests(SynchronousTestCase):
    """docs/deploy.md's reference tables follow the code they describe."""

    def setUp(self):
        with open(os.path.join(REPO_ROOT, "docs", "deploy.md")) as f:
            self.text = f.read()

    def rows(self, heading: str) -> Dict[str, List[str]]:
        """Table rows of the section under ``heading``, by the options in their first cell."""
        section = self.text.split("\n## " + heading, 1)[1].split("\n## ", 1)[0]
        rows = {}
        for line in section.splitlines():
            if not line.startswith("| `"):
                continue
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            for option in re.findall(r"`(-[-\w]+)`", cells[0]):
                rows[option] = cells
        return rows

    def test_every_raftnode_option_with_its_default(self):
        """Each `twistd raftnode` option has a row, and a stated default is the code's."""
        rows = self.rows("Configuration reference")
        for long_name, short, default, *_ in raftnode.Options.optParameters:
            option = "--" + long_name
            self.assertIn(option, rows, "%s is not in the configuration reference" % option)
            if default is not None:
                self.assertIn(str(default), rows[option][1], option)
            if short:
                self.assertIn("`-%s`" % short, rows[option][0], option)
        self.assertIn("`%s`" % raftnode.SECRET_ENV, self.text)

    def test_every_raftnode_flag(self):
        """Each `twistd raftnode` flag has a row too, off by default."""
        rows = self.rows("Configuration reference")
        for long_name, *_ in raftnode.Options.optFlags:
            option = "--" + long_name
            self.assertIn(option, rows, "%s is not in the configuration reference" % option)
            self.assertEqual(rows[option][1], "off", option)

    def test_every_cluster_command_option_with_its_default(self):
        """Each `txraft-cluster` option has a row with the parser's default."""
        from txraft.tools.clustercmd import build_parser

        rows = self.rows("The same without Docker")
        for action in build_parser()._actions:
            for option in action.option_strings:
                if option in ("-h", "--help"):
                    continue
                self.assertIn(option, rows, "%s is not documented" % option)
                default = action.default
                if isinstance(default, float) and default.is_integer():
                    default = int(default)
                self.assertIn(str(default).lstrip("./"), rows[option][1], option)
