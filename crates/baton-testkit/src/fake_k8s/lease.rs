//! Decoding and validating a Lease as the API server does: the body is decoded into the typed
//! `coordination.k8s.io/v1` Lease, so unknown fields are dropped (with a `Warning` header,
//! the default `fieldValidation=Warn` since Kubernetes 1.27), a field of the wrong JSON type
//! is a 400, MicroTimes are parsed strictly, and `null` means absent. Then
//! `pkg/apis/coordination/validation/validation.go` (`ValidateLease`) runs.

use serde_json::{Map, Value};

use super::micro_time::{format_micro_time, parse_micro_time};
use super::status::{ApiError, FieldError, decode_error, invalid};

/// `coordination.k8s.io/v1`.
pub const API_VERSION: &str = "coordination.k8s.io/v1";

/// The ObjectMeta fields a client may send (`staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/types.go`).
const META_STRINGS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
];
const META_OTHER: &[&str] = &[
    "generation",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

fn json_type(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(n) => format!("number {n}"),
        Value::String(_) => "string".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

fn type_error(v: &Value, go_struct: &str, path: &str, go_type: &str) -> ApiError {
    // Go names the JSON type, and a number's value.
    let found = json_type(v);
    decode_error(&format!(
        "json: cannot unmarshal {found} into Go struct field {go_struct}.{path} of type {go_type}"
    ))
}

/// A Lease decoded from a request body: the normalized object and the unknown fields dropped.
#[derive(Debug)]
pub struct Decoded {
    /// `apiVersion`, `kind`, `metadata`, `spec`; no nulls, MicroTimes in UTC with six digits.
    pub object: Value,
    /// `unknown field "spec.x"` warnings, as the `Warning` header carries them.
    pub warnings: Vec<String>,
}

/// Decode `body` (already parsed JSON) as a `coordination.k8s.io/v1` Lease.
pub fn decode(body: Value) -> Result<Decoded, ApiError> {
    let Value::Object(top) = body else {
        return Err(decode_error(&format!(
            "json: cannot unmarshal {} into Go value of type v1.Lease",
            json_type(&body)
        )));
    };
    let mut warnings = Vec::new();
    let mut out = Map::new();
    match top.get("apiVersion") {
        None | Some(Value::Null) => {}
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(Value::String(v)) if v.is_empty() => {}
        Some(other) => {
            let shown = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned);
            return Err(super::status::bad_request(format!(
                "the API version in the data ({shown}) does not match the expected API version \
                 ({API_VERSION})"
            )));
        }
    }
    match top.get("kind") {
        None | Some(Value::Null) => {}
        Some(Value::String(k)) if k == "Lease" || k.is_empty() => {}
        Some(other) => {
            let shown = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned);
            return Err(super::status::bad_request(format!(
                "the kind in the data ({shown}) does not match the expected kind (Lease)"
            )));
        }
    }
    out.insert("kind".into(), "Lease".into());
    out.insert("apiVersion".into(), API_VERSION.into());
    let mut meta = Map::new();
    let mut spec = Map::new();
    for (key, value) in top {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => match value {
                Value::Null => {}
                Value::Object(m) => decode_meta(m, &mut meta, &mut warnings)?,
                other => return Err(type_error(&other, "Lease", "metadata", "v1.ObjectMeta")),
            },
            "spec" => match value {
                Value::Null => {}
                Value::Object(s) => decode_spec(s, &mut spec, &mut warnings)?,
                other => return Err(type_error(&other, "Lease", "spec", "v1.LeaseSpec")),
            },
            _ => warnings.push(format!("unknown field {key:?}")),
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    out.insert("spec".into(), Value::Object(spec));
    Ok(Decoded {
        object: Value::Object(out),
        warnings,
    })
}

fn decode_meta(
    m: Map<String, Value>,
    meta: &mut Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<(), ApiError> {
    for (key, value) in m {
        if value.is_null() {
            continue;
        }
        if META_STRINGS.contains(&key.as_str()) {
            if !value.is_string() {
                let path = format!("metadata.{key}");
                let ty = if key.ends_with("Timestamp") {
                    "v1.Time"
                } else {
                    "string"
                };
                return Err(type_error(&value, "ObjectMeta", &path, ty));
            }
            meta.insert(key, value);
        } else if key == "labels" || key == "annotations" {
            let Value::Object(map) = &value else {
                let path = format!("metadata.{key}");
                return Err(type_error(&value, "ObjectMeta", &path, "map[string]string"));
            };
            if let Some((k, v)) = map.iter().find(|(_, v)| !v.is_string()) {
                let path = format!("metadata.{key}.{k}");
                return Err(type_error(v, "ObjectMeta", &path, "string"));
            }
            meta.insert(key, value);
        } else if META_OTHER.contains(&key.as_str()) {
            meta.insert(key, value);
        } else {
            warnings.push(format!("unknown field \"metadata.{key}\""));
        }
    }
    Ok(())
}

fn decode_spec(
    s: Map<String, Value>,
    spec: &mut Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<(), ApiError> {
    for (key, value) in s {
        if value.is_null() {
            continue;
        }
        let path = format!("spec.{key}");
        match key.as_str() {
            "holderIdentity" | "strategy" | "preferredHolder" => {
                if !value.is_string() {
                    return Err(type_error(&value, "LeaseSpec", &path, "string"));
                }
                spec.insert(key, value);
            }
            "leaseDurationSeconds" | "leaseTransitions" => {
                let n = value.as_i64().filter(|n| i32::try_from(*n).is_ok());
                let Some(n) = n else {
                    return Err(type_error(&value, "LeaseSpec", &path, "int32"));
                };
                spec.insert(key, n.into());
            }
            "acquireTime" | "renewTime" => {
                let Value::String(text) = &value else {
                    return Err(type_error(&value, "LeaseSpec", &path, "v1.MicroTime"));
                };
                let micros = parse_micro_time(text).map_err(|e| decode_error(&e))?;
                spec.insert(key, format_micro_time(micros).into());
            }
            _ => warnings.push(format!("unknown field {path:?}")),
        }
    }
    Ok(())
}

/// `validation.IsDNS1123Subdomain`'s message
/// (`staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go`).
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
    alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character \
    (e.g. 'example.com', regex used for validation is \
    '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// The messages `IsDNS1123Subdomain` gives for `name`; empty when it is valid.
pub fn dns1123_subdomain_errors(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > 253 {
        errs.push("must be no more than 253 characters".to_owned());
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    if !name.split('.').all(label_ok) {
        errs.push(DNS1123_SUBDOMAIN_MSG.to_owned());
    }
    errs
}

/// `validation.IsQualifiedName`'s regex message
/// (`staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go`).
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and \
    must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or \
    '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// The messages `IsQualifiedName` gives for `value` (`[prefix/]name`); empty when it is valid.
pub fn qualified_name_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                for msg in dns1123_subdomain_errors(prefix) {
                    errs.push(format!("prefix part {msg}"));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and \
                 '/' (e.g. 'example.com/MyName')"
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_owned());
    }
    let b = name.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    let matches = !b.is_empty()
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
        && b.iter()
            .all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.'));
    if !matches {
        errs.push(format!("name part {QUALIFIED_NAME_MSG}"));
    }
    errs
}

/// `validation.IsValidLabelValue`'s regex message.
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric \
    characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. \
    'MyValue',  or 'my_value',  or '12345', regex used for validation is \
    '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// The messages `IsValidLabelValue` gives for `value`; empty when it is valid.
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_owned());
    }
    let b = value.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    let matches = b.is_empty()
        || (alnum(&b[0])
            && alnum(&b[b.len() - 1])
            && b.iter()
                .all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.')));
    if !matches {
        errs.push(LABEL_VALUE_MSG.to_owned());
    }
    errs
}

/// `ValidateLease` (create and update: `ValidateObjectMeta` with `NameIsDNSSubdomain`, then
/// `ValidateLeaseSpec`). `object` is a decoded Lease with its name and namespace filled in.
pub fn validate(object: &Value) -> Result<(), ApiError> {
    let name = object["metadata"]["name"].as_str().unwrap_or("");
    let mut errs = Vec::new();
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for msg in dns1123_subdomain_errors(name) {
            errs.push(FieldError::invalid(
                "metadata.name",
                &format!("{name:?}"),
                &msg,
            ));
        }
    }
    // `ValidateLabels` (`staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go`):
    // each key a qualified name, each value `IsValidLabelValue`.
    for (k, v) in object["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
    {
        for msg in qualified_name_errors(k) {
            errs.push(FieldError::invalid(
                "metadata.labels",
                &format!("{k:?}"),
                &msg,
            ));
        }
        let v = v.as_str().unwrap_or("");
        for msg in label_value_errors(v) {
            errs.push(FieldError::invalid(
                "metadata.labels",
                &format!("{v:?}"),
                &msg,
            ));
        }
    }
    let spec = &object["spec"];
    if let Some(d) = spec["leaseDurationSeconds"].as_i64()
        && d <= 0
    {
        errs.push(FieldError::invalid(
            "spec.leaseDurationSeconds",
            &d.to_string(),
            "must be greater than 0",
        ));
    }
    if let Some(t) = spec["leaseTransitions"].as_i64()
        && t < 0
    {
        errs.push(FieldError::invalid(
            "spec.leaseTransitions",
            &t.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    // `ValidateCoordinatedLeaseStrategy`, which names the field `strategy` once more: a
    // strategy without `/` must be Kubernetes' own, one with `/` a qualified name (a custom
    // strategy, such as Baton's `baton.dev/handoff`). The field needs the
    // `CoordinatedLeaderElection` feature gate, which this fake has on.
    let strategy = spec["strategy"].as_str();
    if let Some(s) = strategy {
        if !s.contains('/') {
            if s != "OldestEmulationVersion" {
                errs.push(FieldError {
                    field: "spec.strategy.strategy".to_owned(),
                    body: format!(
                        "Unsupported value: {s:?}: supported values: \"OldestEmulationVersion\""
                    ),
                    reason: "FieldValueNotSupported",
                });
            }
        } else {
            for msg in qualified_name_errors(s) {
                errs.push(FieldError::invalid(
                    "spec.strategy.strategy",
                    &format!("{s:?}"),
                    &msg,
                ));
            }
        }
    }
    if spec["preferredHolder"]
        .as_str()
        .is_some_and(|p| !p.is_empty())
        && strategy.is_none_or(str::is_empty)
    {
        errs.push(FieldError {
            field: "spec.preferredHolder".to_owned(),
            body: "Forbidden: may only be specified if `strategy` is defined".to_owned(),
            reason: "FieldValueForbidden",
        });
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(invalid("Lease", name, &errs))
    }
}
