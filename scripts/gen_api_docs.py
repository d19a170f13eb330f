"""Writes the API reference and the events catalogue from the proto comments.

Usage: gen_api_docs.py IMAGE OUT_DIR, where IMAGE is a FileDescriptorSet with source info
(`buf build --as-file-descriptor-set`). The output is deterministic, so CI can diff it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

# Field numbers of FileDescriptorProto / DescriptorProto / ServiceDescriptorProto, used to find
# the comments in SourceCodeInfo.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MSG_FIELD, MSG_NESTED, MSG_ENUM = 2, 3, 4
ENUM_VALUE, SERVICE_METHOD = 2, 2

TYPE_NAMES = {
    number: name[len("TYPE_") :].lower()
    for name, number in descriptor_pb2.FieldDescriptorProto.Type.items()
}


def comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    out = {}
    for loc in file.source_code_info.location:
        text = loc.leading_comments.strip()
        if text:
            out[tuple(loc.path)] = " ".join(line.strip() for line in text.splitlines())
    return out


def type_of(field: descriptor_pb2.FieldDescriptorProto) -> str:
    name = field.type_name.lstrip(".") if field.type_name else TYPE_NAMES[field.type]
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return f"repeated {name}"
    return name


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_message(lines, msg, path, docs, prefix):
    full = f"{prefix}.{msg.name}"
    if msg.options.map_entry:
        return
    lines += [f"### {full}", "", docs.get(path, ""), ""]
    if msg.field:
        oneofs = {i: o.name for i, o in enumerate(msg.oneof_decl)}
        lines += ["| field | type | description |", "|---|---|---|"]
        for i, field in enumerate(msg.field):
            note = docs.get(path + (MSG_FIELD, i), "")
            if field.HasField("oneof_index") and not field.proto3_optional:
                note = f"(oneof `{oneofs[field.oneof_index]}`) {note}"
            lines.append(f"| `{field.name}` | `{type_of(field)}` | {cell(note)} |")
        lines.append("")
    for i, nested in enumerate(msg.nested_type):
        render_message(lines, nested, path + (MSG_NESTED, i), docs, full)
    for i, enum in enumerate(msg.enum_type):
        render_enum(lines, enum, path + (MSG_ENUM, i), docs, full)


def render_enum(lines, enum, path, docs, prefix):
    lines += [f"### {prefix}.{enum.name}", "", docs.get(path, ""), ""]
    lines += ["| value | number | description |", "|---|---|---|"]
    for i, value in enumerate(enum.value):
        lines.append(
            f"| `{value.name}` | {value.number} | {cell(docs.get(path + (ENUM_VALUE, i), ''))} |"
        )
    lines.append("")


def render_package(package: str, files: list[descriptor_pb2.FileDescriptorProto]) -> str:
    lines = [
        f"# `{package}`",
        "",
        "Generated from the proto comments by `make gen`; do not edit.",
        "",
    ]
    for file in files:
        docs = comments(file)
        for s, service in enumerate(file.service):
            path = (FILE_SERVICE, s)
            lines += [f"## {service.name}", "", docs.get(path, ""), ""]
            for m, method in enumerate(service.method):
                stream = (
                    "stream " if method.client_streaming else "",
                    "stream " if method.server_streaming else "",
                )
                lines += [
                    f"### {service.name}.{method.name}",
                    "",
                    f"`rpc {method.name}({stream[0]}{method.input_type.lstrip('.')}) returns "
                    f"({stream[1]}{method.output_type.lstrip('.')})`",
                    "",
                    docs.get(path + (SERVICE_METHOD, m), ""),
                    "",
                ]
    lines += ["## Messages and enums", ""]
    for file in files:
        docs = comments(file)
        for i, msg in enumerate(file.message_type):
            render_message(lines, msg, (FILE_MESSAGE, i), docs, package)
        for i, enum in enumerate(file.enum_type):
            render_enum(lines, enum, (FILE_ENUM, i), docs, package)
    return "\n".join(lines).rstrip() + "\n"


def render_events_catalogue(files: list[descriptor_pb2.FileDescriptorProto]) -> str:
    """One row per event payload: the `type` string that filters and webhooks match on."""
    by_name = {}
    for file in files:
        docs = comments(file)
        for i, msg in enumerate(file.message_type):
            by_name[msg.name] = (msg, docs, (FILE_MESSAGE, i))
    lines = [
        "# Events catalogue",
        "",
        "Every state change is recorded as a `classwire.api.events.v1.Event` whose `type` is the",
        "fully-qualified name of its payload. Filters (WatchEvents, webhooks) match on that name.",
        "Generated from the proto comments by `make gen`; do not edit.",
        "",
    ]
    for area in ("Platform", "Roster", "Scheduling", "Session", "Media", "Data"):
        group = by_name.get(f"{area}Event")
        if not group:
            continue
        msg, docs, path = group
        lines += [f"## {area}", "", docs.get(path, ""), "", "| type | description |", "|---|---|"]
        for field in msg.field:
            payload = field.type_name.lstrip(".")
            target = by_name.get(payload.rsplit(".", 1)[-1])
            text = target[1].get(target[2], "") if target else ""
            lines.append(f"| `{payload}` | {cell(text)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    image, out = Path(sys.argv[1]), Path(sys.argv[2])
    fds = descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes())
    packages: dict[str, list] = {}
    for file in fds.file:
        if file.package.startswith("classwire."):
            packages.setdefault(file.package, []).append(file)
    api_dir = out / "api"
    api_dir.mkdir(parents=True, exist_ok=True)
    for old in api_dir.glob("*.md"):
        old.unlink()
    index = [
        "# API reference",
        "",
        "Generated from the proto comments by `make gen`; do not edit.",
        "",
    ]
    for package in sorted(packages):
        files = sorted(packages[package], key=lambda f: f.name)
        (api_dir / f"{package}.md").write_text(render_package(package, files))
        index.append(f"- [`{package}`]({package}.md)")
    (api_dir / "README.md").write_text("\n".join(index) + "\n")
    events = packages.get("classwire.api.events.v1", [])
    (out / "events.md").write_text(render_events_catalogue(events))


if __name__ == "__main__":
    main()
