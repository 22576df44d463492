"""Check one HTTP request (and the answer to it) against a provider's published OpenAPI 3.1 document."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCS = Path(__file__).resolve().parent.parent / "data" / "provider_api"
METHODS = ("get", "put", "post", "delete", "patch")


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class OpenApiDoc:
    """One vendored document: finds the operation of a request and lists every way the request breaks it."""

    def __init__(self, path: Path, uri: str) -> None:
        text = path.read_text()
        self.doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        self.uri = uri
        self.registry = Registry().with_resource(uri, Resource.from_contents(self.doc, DRAFT202012))
        # Literal segments before templated ones: /v2/catalog/gpus must not match /v2/catalog/gpus/{id}.
        self.paths = sorted(self.doc["paths"], key=lambda p: (p.count("{"), -len(p)))

    def _validator(self, pointer: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{self.uri}#/{pointer}"}, registry=self.registry)

    def _resolve(self, node: Dict[str, Any]) -> Dict[str, Any]:
        while "$ref" in node:
            node = self.registry.resolver(self.uri).lookup(node["$ref"]).contents
        return node

    def operation(self, method: str, path: str) -> Tuple[Optional[str], Optional[Dict[str, str]], List[str]]:
        """(documented path template, path parameters, problems); the template is None when nothing matches."""
        bare = path.rstrip("/") or "/"
        for template in self.paths:
            pattern = re.sub(r"\\\{([^}]+)\\\}", r"(?P<\1>[^/]+)", re.escape(template.rstrip("/") or "/"))
            match = re.fullmatch(pattern, bare)
            if match:
                if method.lower() not in self.doc["paths"][template]:
                    return (
                        None,
                        None,
                        [
                            f"{method} {path}: the document has no {method} on {template} "
                            f"(only {', '.join(m.upper() for m in self.doc['paths'][template] if m in METHODS)})"
                        ],
                    )
                return template, match.groupdict(), []
        return None, None, [f"{method} {path}: no such path in the document"]

    def check_request(
        self, method: str, path: str, query: Dict[str, List[str]], body: Any, has_body: bool
    ) -> Tuple[Optional[str], List[str]]:
        """(path template, problems): undocumented path, method, query parameter or body field; wrong type, enum,
        pattern or a missing required field."""
        template, path_params, problems = self.operation(method, path)
        if template is None:
            return None, problems
        op = self.doc["paths"][template][method.lower()]
        declared = {}
        for raw in self.doc["paths"][template].get("parameters", []) + op.get("parameters", []):
            param = self._resolve(raw)
            declared[(param["in"], param["name"])] = param
        for name, value in (path_params or {}).items():
            param = declared.get(("path", name))
            if param is not None:
                problems += self._param_problems(param, [value], f"path parameter {name}")
        for name, values in query.items():
            param = declared.get(("query", name))
            if param is None:
                problems.append(f"{method} {template}: undocumented query parameter {name!r}")
                continue
            problems += self._param_problems(param, values, f"query parameter {name}")
        for (where, name), param in declared.items():
            if where == "query" and param.get("required") and name not in query:
                problems.append(f"{method} {template}: required query parameter {name!r} missing")
        problems += self._body_problems(method, template, op, body, has_body)
        return template, problems

    def _param_problems(self, param: Dict[str, Any], values: List[str], what: str) -> List[str]:
        schema = self._resolve(param.get("schema") or {})
        if len(values) > 1 and schema.get("type") != "array":
            return [f"{what} given {len(values)} times"]
        value: Any = values[0] if len(values) == 1 else values
        kind = schema.get("type")
        try:
            if kind == "array":  # style form, explode false: one comma-separated value
                value = [v for raw in values for v in raw.split(",")]
                items = self._resolve(schema.get("items") or {})
                if items.get("type") == "integer":
                    value = [int(v) for v in value]
            elif kind == "integer":
                value = int(value)
            elif kind == "number":
                value = float(value)
            elif kind == "boolean":
                if value not in ("true", "false"):
                    return [f"{what}={value!r} is not a boolean"]
                value = value == "true"
        except ValueError:
            return [f"{what}={values!r} is not of type {kind}"]
        pointer = None
        for location, doc_param in self._params_with_pointers():
            if doc_param is param:
                pointer = location
        validator = self._validator(pointer + "/schema") if pointer else Draft202012Validator(schema)
        return [f"{what}={value!r}: {err.message}" for err in validator.iter_errors(value)]

    def _params_with_pointers(self):
        for name, param in (self.doc.get("components", {}).get("parameters") or {}).items():
            yield _pointer("components", "parameters", name), param
        for template, item in self.doc["paths"].items():
            for i, param in enumerate(item.get("parameters", [])):
                yield _pointer("paths", template, "parameters", str(i)), param
            for method in METHODS:
                for i, param in enumerate((item.get(method) or {}).get("parameters", [])):
                    yield _pointer("paths", template, method, "parameters", str(i)), param

    def _body_problems(self, method: str, template: str, op: Dict[str, Any], body: Any, has_body: bool) -> List[str]:
        spec = op.get("requestBody")
        if spec is None:
            return [f"{method} {template}: a body was sent; the document declares none"] if has_body else []
        spec = self._resolve(spec)
        if not has_body:
            return [f"{method} {template}: the required body is missing"] if spec.get("required") else []
        if "application/json" not in spec.get("content", {}):
            return [f"{method} {template}: the document takes no JSON body"]
        pointer = _pointer("paths", template, method.lower(), "requestBody", "content", "application/json", "schema")
        problems = [
            f"{method} {template} body: {'/'.join(map(str, err.absolute_path)) or '(root)'}: {err.message}"
            for err in self._validator(pointer).iter_errors(body)
        ]
        schema = self._resolve(spec["content"]["application/json"]["schema"])
        # A closed object even where the document leaves additionalProperties unsaid (Vast): a field it does not
        # name is a misreading of the API, which the real server would ignore silently.
        if (
            isinstance(body, dict)
            and "properties" in schema
            and "additionalProperties" not in schema
            and "unevaluatedProperties" not in schema
        ):
            problems += [
                f"{method} {template} body: undocumented field {k!r}" for k in body if k not in schema["properties"]
            ]
        return problems

    def check_response(self, method: str, template: str, status: int, body: Any) -> List[str]:
        """Problems of an answer the fake is about to send (its own shapes must be the documented ones)."""
        responses = self.doc["paths"][template][method.lower()].get("responses", {})
        key = str(status) if str(status) in responses else "default" if "default" in responses else None
        if key is None:
            return [f"{method} {template}: status {status} is not documented"]
        response = self._resolve(responses[key])
        content = response.get("content") or {}
        media = next((m for m in content if "json" in m), None)
        if media is None or body is None or "schema" not in content[media]:
            return []
        if "$ref" in responses[key]:
            ref = responses[key]["$ref"].lstrip("#/")
            pointer = ref + "/" + _pointer("content", media, "schema")
        else:
            pointer = _pointer("paths", template, method.lower(), "responses", key, "content", media, "schema")
        return [
            f"{method} {template} -> {status}: {'/'.join(map(str, err.absolute_path)) or '(root)'}: {err.message}"
            for err in self._validator(pointer).iter_errors(body)
        ]


def rate_limits(folder: Path) -> Dict[Tuple[str, str], Dict[str, Any]]:
    """{(METHOD, path without trailing slash): x-rate-limit} from Vast's per-endpoint files (the combined document
    drops them)."""
    limits = {}
    for file in sorted(folder.glob("*.yaml")):
        doc = yaml.safe_load(file.read_text())
        if "x-rate-limit" not in doc:
            continue
        for template, item in doc["paths"].items():
            for method in item:
                if method in METHODS:
                    limits[(method.upper(), template.rstrip("/"))] = doc["x-rate-limit"]
    return limits
