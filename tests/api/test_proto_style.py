"""The contracts follow Buf STANDARD naming and Google's AIP conventions.

Every .proto under protos/ is compiled here with grpc_tools.protoc into a
FileDescriptorSet (so nothing depends on the generated code), and the rules are
checked on the descriptors. Each violation names its file and its rule, using
Buf's rule ids where Buf has one. Negative tests feed small bad contracts to the
same checker to prove that every rule can fail.

Contracts of other projects vendored under protos/third_party/ keep their own
names (e.g. the KServe v2 `inference` package) and are not checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
WELL_KNOWN_PROTOS = Path(grpc_tools.__file__).parent / "_proto"
VENDORED_DIR = "third_party"

FieldType = descriptor_pb2.FieldDescriptorProto
PASCAL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
LOWER_SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
UPPER_SNAKE_CASE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
PACKAGE = re.compile(r"^simulacra\.[a-z][a-z0-9_]*\.v[1-9][0-9]*$")
EMPTY = ".google.protobuf.Empty"
JOB_STATE = ".simulacra.common.v1.JobState"
# Names that tensor payloads go by: such a field must be a Tensor (bytes), never repeated floats.
TENSOR_FIELD_NAMES = frozenset({"data", "values", "samples", "pixels", "image", "images", "tensor", "latent", "z"})
FLOAT_TYPES = (FieldType.TYPE_FLOAT, FieldType.TYPE_DOUBLE)


@dataclass(frozen=True)
class Violation:
    file: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}: [{self.rule}] {self.detail}"


def contract_files(proto_root: Path) -> list[str]:
    """Paths, relative to proto_root, of every contract that must follow the rules."""
    return sorted(
        p.relative_to(proto_root).as_posix()
        for p in proto_root.rglob("*.proto")
        if VENDORED_DIR not in p.relative_to(proto_root).parts
    )


def compile_contracts(proto_root: Path, files: list[str], out_dir: Path) -> descriptor_pb2.FileDescriptorSet:
    out = out_dir / "contracts.pb"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{WELL_KNOWN_PROTOS}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            *files,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"protoc could not compile the contracts:\n{result.stderr}"
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


# --- naming helpers ----------------------------------------------------------------


def buf_upper_snake(name: str) -> str:
    """PascalCase to UPPER_SNAKE_CASE the way Buf's lint derives enum value prefixes.

    An upper-case letter starts a new word when the letter before it is lower case
    or the letter after it is lower case: JobState -> JOB_STATE, HTTPCode -> HTTP_CODE,
    DType -> D_TYPE, Cuboid3dKind -> CUBOID3D_KIND.
    """
    out = name[:1]
    for i in range(1, len(name)):
        char, after = name[i], name[i + 1 : i + 2]
        starts_word = char.isupper() and out[-1] != "_" and (
            name[i - 1].islower() or (after != "" and not after.isupper() and not after.isdigit() and after != "_")
        )
        out += f"_{char}" if starts_word else char
    return out.upper()


def enum_value_prefixes(name: str) -> tuple[str, ...]:
    """The value prefix Buf requires for an enum called `name` (DataType -> DATA_TYPE)."""
    return (buf_upper_snake(name),)


def walk_messages(
    messages: list[descriptor_pb2.DescriptorProto], prefix: str
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    """(qualified name, message) for every message, nested ones included."""
    for message in messages:
        qualified = f"{prefix}.{message.name}"
        yield qualified, message
        yield from walk_messages(list(message.nested_type), qualified)


def walk_enums(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[str, descriptor_pb2.EnumDescriptorProto]]:
    for enum in file.enum_type:
        yield f".{file.package}.{enum.name}", enum
    for qualified, message in walk_messages(list(file.message_type), f".{file.package}"):
        for enum in message.enum_type:
            yield f"{qualified}.{enum.name}", enum


# --- the checker -------------------------------------------------------------------


def check_contracts(fds: descriptor_pb2.FileDescriptorSet, checked: set[str]) -> list[Violation]:
    """Every rule violation of the files named in `checked` (imports are only looked up)."""
    files = [f for f in fds.file if f.name in checked]
    messages = {
        qualified: message
        for f in fds.file
        for qualified, message in walk_messages(list(f.message_type), f".{f.package}" if f.package else "")
    }
    violations: list[Violation] = []
    for f in files:
        violations += _check_file(f)
        violations += _check_services(f, messages)
        for qualified, message in walk_messages(list(f.message_type), f".{f.package}"):
            violations += _check_message(f.name, qualified, message)
        for qualified, enum in walk_enums(f):
            violations += _check_enum(f.name, qualified, enum)
    violations += _check_unique_request_response(files)
    return violations


def _check_file(f: descriptor_pb2.FileDescriptorProto) -> list[Violation]:
    out: list[Violation] = []
    path = Path(f.name)
    if f.syntax != "proto3":
        out.append(Violation(f.name, "SYNTAX_SPECIFIED", f'syntax is {f.syntax or "proto2 (unspecified)"!r}, expected "proto3"'))
    if not LOWER_SNAKE_CASE.match(path.stem):
        out.append(Violation(f.name, "FILE_LOWER_SNAKE_CASE", f"file name {path.name!r} is not lower_snake_case"))
    if not PACKAGE.match(f.package):
        out.append(Violation(f.name, "PACKAGE_VERSION_SUFFIX", f"package {f.package!r} is not simulacra.<service>.v<N>"))
    expected_dir = f.package.replace(".", "/")
    if path.parent.as_posix() != expected_dir:
        out.append(
            Violation(f.name, "PACKAGE_DIRECTORY_MATCH", f"package {f.package!r} must live in {expected_dir}/, not {path.parent}/")
        )
    if "google/protobuf/empty.proto" in f.dependency:
        out.append(Violation(f.name, "NO_EMPTY", "imports google/protobuf/empty.proto; give each RPC its own messages"))
    return out


def _check_services(f: descriptor_pb2.FileDescriptorProto, messages: dict[str, descriptor_pb2.DescriptorProto]) -> list[Violation]:
    out: list[Violation] = []
    for service in f.service:
        if not PASCAL_CASE.match(service.name):
            out.append(Violation(f.name, "SERVICE_PASCAL_CASE", f"service {service.name!r} is not PascalCase"))
        if not service.name.endswith("Service"):
            out.append(Violation(f.name, "SERVICE_SUFFIX", f"service {service.name!r} must end in 'Service'"))
        for rpc in service.method:
            where = f"{service.name}.{rpc.name}"
            if not PASCAL_CASE.match(rpc.name):
                out.append(Violation(f.name, "RPC_PASCAL_CASE", f"RPC {where} is not PascalCase"))
            for role, type_name in (("Request", rpc.input_type), ("Response", rpc.output_type)):
                short = type_name.rsplit(".", 1)[-1]
                if type_name == EMPTY:
                    out.append(Violation(f.name, "NO_EMPTY", f"{where} uses google.protobuf.Empty as its {role.lower()}"))
                allowed = {f"{rpc.name}{role}", f"{service.name}{rpc.name}{role}"}
                if short not in allowed:
                    rule = f"RPC_{role.upper()}_STANDARD_NAME"
                    out.append(Violation(f.name, rule, f"{where} {role.lower()} is {short}, expected {rpc.name}{role}"))
            if rpc.name.startswith("List"):
                out += _check_pagination(f.name, where, messages.get(rpc.input_type), messages.get(rpc.output_type))
            if rpc.name.startswith("Watch") and (rpc.client_streaming or not rpc.server_streaming):
                out.append(Violation(f.name, "WATCH_SERVER_STREAMING", f"{where} must be server streaming only"))
    return out


def _field(message: descriptor_pb2.DescriptorProto | None, name: str) -> descriptor_pb2.FieldDescriptorProto | None:
    if message is None:
        return None
    return next((field for field in message.field if field.name == name), None)


def _is_single(field: descriptor_pb2.FieldDescriptorProto | None, field_type: int) -> bool:
    return field is not None and field.type == field_type and field.label != FieldType.LABEL_REPEATED


def _check_pagination(
    file: str, where: str, request: descriptor_pb2.DescriptorProto | None, response: descriptor_pb2.DescriptorProto | None
) -> list[Violation]:
    out: list[Violation] = []
    if not _is_single(_field(request, "page_size"), FieldType.TYPE_INT32):
        out.append(Violation(file, "AIP_LIST_PAGINATION", f"{where} request lacks `int32 page_size`"))
    if not _is_single(_field(request, "page_token"), FieldType.TYPE_STRING):
        out.append(Violation(file, "AIP_LIST_PAGINATION", f"{where} request lacks `string page_token`"))
    if not _is_single(_field(response, "next_page_token"), FieldType.TYPE_STRING):
        out.append(Violation(file, "AIP_LIST_PAGINATION", f"{where} response lacks `string next_page_token`"))
    return out


def _check_message(file: str, qualified: str, message: descriptor_pb2.DescriptorProto) -> list[Violation]:
    out: list[Violation] = []
    if not PASCAL_CASE.match(message.name):
        out.append(Violation(file, "MESSAGE_PASCAL_CASE", f"message {qualified} is not PascalCase"))
    # proto3 `optional` fields live in synthetic oneofs named `_<field>`: not the author's names.
    synthetic = {field.oneof_index for field in message.field if field.proto3_optional}
    for index, oneof in enumerate(message.oneof_decl):
        if index not in synthetic and not LOWER_SNAKE_CASE.match(oneof.name):
            out.append(Violation(file, "ONEOF_LOWER_SNAKE_CASE", f"oneof {qualified}.{oneof.name} is not lower_snake_case"))
    for field in message.field:
        where = f"{qualified}.{field.name}"
        if not LOWER_SNAKE_CASE.match(field.name):
            out.append(Violation(file, "FIELD_LOWER_SNAKE_CASE", f"field {where} is not lower_snake_case"))
        if field.type_name == EMPTY:
            out.append(Violation(file, "NO_EMPTY", f"field {where} has type google.protobuf.Empty"))
        if field.label == FieldType.LABEL_REPEATED and field.type in FLOAT_TYPES and field.name in TENSOR_FIELD_NAMES:
            out.append(
                Violation(file, "TENSOR_AS_BYTES", f"field {where} is repeated float/double; send simulacra.common.v1.Tensor")
            )
    if message.name.endswith("Job") and not message.options.map_entry:
        state = _field(message, "state")
        if state is None or state.type_name != JOB_STATE:
            out.append(Violation(file, "JOB_STATE_ENUM", f"job resource {qualified} needs `simulacra.common.v1.JobState state`"))
    return out


def _check_enum(file: str, qualified: str, enum: descriptor_pb2.EnumDescriptorProto) -> list[Violation]:
    out: list[Violation] = []
    if not PASCAL_CASE.match(enum.name):
        out.append(Violation(file, "ENUM_PASCAL_CASE", f"enum {qualified} is not PascalCase"))
    if enum.options.allow_alias:
        out.append(Violation(file, "ENUM_NO_ALLOW_ALIAS", f"enum {qualified} sets allow_alias"))
    prefixes = enum_value_prefixes(enum.name)
    preferred = prefixes[0]
    first = enum.value[0]
    if first.number != 0 or first.name not in {f"{p}_UNSPECIFIED" for p in prefixes}:
        out.append(
            Violation(
                file,
                "ENUM_ZERO_VALUE_SUFFIX",
                f"enum {qualified} starts with {first.name} = {first.number}, expected {preferred}_UNSPECIFIED = 0",
            )
        )
    for value in enum.value:
        if not UPPER_SNAKE_CASE.match(value.name):
            out.append(Violation(file, "ENUM_VALUE_UPPER_SNAKE_CASE", f"value {qualified}.{value.name} is not UPPER_SNAKE_CASE"))
        if not any(value.name.startswith(f"{p}_") for p in prefixes):
            out.append(Violation(file, "ENUM_VALUE_PREFIX", f"value {qualified}.{value.name} must start with {preferred}_"))
    return out


def _check_unique_request_response(files: list[descriptor_pb2.FileDescriptorProto]) -> list[Violation]:
    """Buf RPC_REQUEST_RESPONSE_UNIQUE: a message is the request or response of one RPC only."""
    uses: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for f in files:
        for service in f.service:
            for rpc in service.method:
                where = f"{service.name}.{rpc.name}"
                uses[rpc.input_type].append((f.name, where))
                uses[rpc.output_type].append((f.name, where))
    out: list[Violation] = []
    for type_name, users in sorted(uses.items()):
        if len(users) > 1:
            rpcs = ", ".join(where for _, where in users)
            for file in sorted({file for file, _ in users}):
                out.append(
                    Violation(file, "RPC_REQUEST_RESPONSE_UNIQUE", f"{type_name.lstrip('.')} is used by several RPCs: {rpcs}")
                )
    return out


# --- the real contracts --------------------------------------------------------------

CONTRACT_FILES = contract_files(PROTO_ROOT)


@pytest.fixture(scope="module")
def contract_descriptors(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    return compile_contracts(PROTO_ROOT, CONTRACT_FILES, tmp_path_factory.mktemp("descriptors"))


@pytest.fixture(scope="module")
def contract_violations(contract_descriptors: descriptor_pb2.FileDescriptorSet) -> list[Violation]:
    return check_contracts(contract_descriptors, set(CONTRACT_FILES))


@pytest.mark.parametrize("proto_file", CONTRACT_FILES)
def test_contract_follows_the_style_rules(proto_file: str, contract_violations: list[Violation]) -> None:
    broken = [str(v) for v in contract_violations if v.file == proto_file]
    assert not broken, "contract style rules broken:\n" + "\n".join(broken)


def test_every_service_has_its_contract(contract_descriptors: descriptor_pb2.FileDescriptorSet) -> None:
    services = {f"{f.package}.{s.name}" for f in contract_descriptors.file for s in f.service}
    assert services >= {
        "simulacra.annotation.v1.AnnotationService",
        "simulacra.augmentation.v1.AugmentationService",
        "simulacra.training.v1.TrainingService",
        "simulacra.training.v1.ModelRegistryService",
        "simulacra.sampling.v1.SamplingService",
    }


def test_every_long_running_job_has_a_watch_stream(contract_descriptors: descriptor_pb2.FileDescriptorSet) -> None:
    rpcs = {rpc.name for f in contract_descriptors.file for s in f.service for rpc in s.method}
    jobs = {rpc.removeprefix("Create") for rpc in rpcs if rpc.startswith("Create") and rpc.endswith("Job")}
    assert jobs >= {"ImportJob", "ExportJob", "AugmentDatasetJob", "TrainingJob"}
    missing = sorted(f"{verb}{job}" for job in jobs for verb in ("Get", "Cancel", "Watch") if f"{verb}{job}" not in rpcs)
    missing += sorted(f"List{job}s" for job in jobs if f"List{job}s" not in rpcs)
    assert not missing, f"job resources lack standard methods: {missing}"


def test_every_rpc_is_in_the_contracts_overview(contract_descriptors: descriptor_pb2.FileDescriptorSet) -> None:
    page = (ROOT / "docs" / "contracts.md").read_text()
    documented: dict[str, set[str]] = {}
    for section in re.split(r"^### ", page, flags=re.MULTILINE)[1:]:
        service = re.match(r"`([\w.]+)`", section)
        if service:
            documented[service.group(1)] = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))
    actual = {
        f"{f.package}.{s.name}": {rpc.name for rpc in s.method}
        for f in contract_descriptors.file
        if f.name in CONTRACT_FILES
        for s in f.service
    }
    assert documented == actual, "docs/contracts.md's RPC tables disagree with protos/"


def test_enum_prefixes_follow_buf_word_splitting() -> None:
    assert enum_value_prefixes("JobState") == ("JOB_STATE",)
    assert enum_value_prefixes("HTTPCode") == ("HTTP_CODE",)
    assert enum_value_prefixes("DType") == ("D_TYPE",)
    assert enum_value_prefixes("DataType") == ("DATA_TYPE",)
    assert enum_value_prefixes("Cuboid3dKind") == ("CUBOID3D_KIND",)
    assert enum_value_prefixes("Vector3D") == ("VECTOR3D",)


# --- the checker can fail ------------------------------------------------------------------


def _violations_of(tmp_path: Path, body: str, *, package: str = "simulacra.bad.v1", path: str = "simulacra/bad/v1/bad.proto") -> list[Violation]:
    source = tmp_path / "protos" / path
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(f'syntax = "proto3";\npackage {package};\n{body}\n')
    fds = compile_contracts(tmp_path / "protos", [path], tmp_path)
    return check_contracts(fds, {path})


def test_checker_catches_a_bad_contract(tmp_path: Path) -> None:
    violations = _violations_of(
        tmp_path,
        """
        enum Color { RED = 0; GREEN = 1; }
        service ThingService {
          rpc ListThings(ListThingsRequest) returns (ListThingsResponse);
          rpc GetThing(GetThingRequest) returns (GetThingResponse);
          rpc DeleteThing(GetThingRequest) returns (DeleteThingResponse);
        }
        message ListThingsRequest { int32 page_size = 1; }
        message ListThingsResponse { string next_page_token = 1; }
        message GetThingRequest { string name = 1; Color color = 2; }
        message GetThingResponse {}
        message DeleteThingResponse {}
        """,
    )
    rules = {v.rule for v in violations}
    assert {"ENUM_ZERO_VALUE_SUFFIX", "ENUM_VALUE_PREFIX", "AIP_LIST_PAGINATION", "RPC_REQUEST_RESPONSE_UNIQUE"} <= rules
    assert "simulacra/bad/v1/bad.proto: [AIP_LIST_PAGINATION] ThingService.ListThings request lacks `string page_token`" in {
        str(v) for v in violations
    }
    assert any("expected COLOR_UNSPECIFIED = 0" in v.detail for v in violations)


BAD_CONTRACTS = {
    "SERVICE_SUFFIX": "service Things { rpc GetThing(GetThingRequest) returns (GetThingResponse); }"
    " message GetThingRequest {} message GetThingResponse {}",
    "RPC_REQUEST_STANDARD_NAME": "service ThingService { rpc GetThing(ThingQuery) returns (GetThingResponse); }"
    " message ThingQuery {} message GetThingResponse {}",
    "RPC_RESPONSE_STANDARD_NAME": "service ThingService { rpc GetThing(GetThingRequest) returns (Thing); }"
    " message GetThingRequest {} message Thing {}",
    "NO_EMPTY": 'import "google/protobuf/empty.proto"; service ThingService {'
    " rpc Ping(google.protobuf.Empty) returns (PingResponse); } message PingResponse {}",
    "MESSAGE_PASCAL_CASE": "message thing_record { string name = 1; }",
    "FIELD_LOWER_SNAKE_CASE": "message Thing { string displayName = 1; }",
    "ONEOF_LOWER_SNAKE_CASE": "message Thing { oneof Source { string url = 1; bytes blob = 2; } }",
    "ENUM_PASCAL_CASE": "enum thing_kind { THING_KIND_UNSPECIFIED = 0; }",
    "ENUM_VALUE_UPPER_SNAKE_CASE": "enum ThingKind { THING_KIND_UNSPECIFIED = 0; THING_KIND_big = 1; }",
    "ENUM_NO_ALLOW_ALIAS": "enum ThingKind { option allow_alias = true; THING_KIND_UNSPECIFIED = 0; THING_KIND_A = 1;"
    " THING_KIND_B = 1; }",
    "TENSOR_AS_BYTES": "message Batch { repeated float data = 1; }",
    "WATCH_SERVER_STREAMING": "service ThingService { rpc WatchThing(WatchThingRequest) returns (WatchThingResponse); }"
    " message WatchThingRequest {} message WatchThingResponse {}",
    "JOB_STATE_ENUM": "message ExportJob { string name = 1; int32 state = 2; }",
    "AIP_LIST_PAGINATION": "service ThingService { rpc ListThings(ListThingsRequest) returns (ListThingsResponse); }"
    " message ListThingsRequest { int64 page_size = 1; string page_token = 2; } message ListThingsResponse {}",
}


@pytest.mark.parametrize("rule", sorted(BAD_CONTRACTS))
def test_checker_catches_each_rule(rule: str, tmp_path: Path) -> None:
    violations = _violations_of(tmp_path, BAD_CONTRACTS[rule])
    assert rule in {v.rule for v in violations}, [str(v) for v in violations]


@pytest.mark.parametrize(
    ("package", "path", "rule"),
    [
        ("simulacra.bad", "simulacra/bad/bad.proto", "PACKAGE_VERSION_SUFFIX"),
        ("bad.v1", "bad/v1/bad.proto", "PACKAGE_VERSION_SUFFIX"),
        ("simulacra.bad.v1", "simulacra/other/v1/bad.proto", "PACKAGE_DIRECTORY_MATCH"),
        ("simulacra.bad.v1", "simulacra/bad/v1/BadFile.proto", "FILE_LOWER_SNAKE_CASE"),
    ],
)
def test_checker_catches_misplaced_packages(package: str, path: str, rule: str, tmp_path: Path) -> None:
    violations = _violations_of(tmp_path, "message Thing {}", package=package, path=path)
    assert rule in {v.rule for v in violations}, [str(v) for v in violations]


def test_checker_accepts_the_buf_service_prefixed_names_and_optional_fields(tmp_path: Path) -> None:
    violations = _violations_of(
        tmp_path,
        """
        service ThingService {
          rpc GetThing(ThingServiceGetThingRequest) returns (ThingServiceGetThingResponse);
        }
        message ThingServiceGetThingRequest { optional float probability = 1; }
        message ThingServiceGetThingResponse { repeated float mean = 1; }
        """,
    )
    assert violations == []
