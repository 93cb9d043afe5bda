//! `metav1.Status` errors, worded as `staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go`
//! words them (`NewNotFound`, `NewAlreadyExists`, `NewConflict`, `NewInvalid`,
//! `NewBadRequest`, `NewForbidden`, `NewResourceExpired`, ...).

use serde_json::{Value, json};

/// The resource and group the fake serves.
pub const GROUP: &str = "coordination.k8s.io";
/// The plural resource name, which `details.kind` carries for most errors.
pub const RESOURCE: &str = "leases";
/// `schema.GroupResource{...}.String()`.
pub const QUALIFIED: &str = "leases.coordination.k8s.io";

/// An API error: the HTTP status code and the `Status` body.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status code, also `status.code`.
    pub code: u16,
    /// The `Status` object.
    pub body: Value,
}

impl ApiError {
    fn new(code: u16, reason: &str, message: String, details: Option<Value>) -> ApiError {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        });
        if let Some(details) = details {
            body["details"] = details;
        }
        ApiError { code, body }
    }

    /// The `reason` of the body.
    pub fn reason(&self) -> &str {
        self.body["reason"].as_str().unwrap_or("")
    }
}

fn details(name: &str) -> Value {
    if name.is_empty() {
        json!({ "group": GROUP, "kind": RESOURCE })
    } else {
        json!({ "name": name, "group": GROUP, "kind": RESOURCE })
    }
}

/// `NewNotFound`: 404.
pub fn not_found(name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{QUALIFIED} {name:?} not found"),
        Some(details(name)),
    )
}

/// `NewAlreadyExists`: 409.
pub fn already_exists(name: &str) -> ApiError {
    ApiError::new(
        409,
        "AlreadyExists",
        format!("{QUALIFIED} {name:?} already exists"),
        Some(details(name)),
    )
}

/// `registry.OptimisticLockErrorMsg`
/// (`staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go`).
pub const OPTIMISTIC_LOCK: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// `NewConflict`: 409, `Operation cannot be fulfilled on leases.coordination.k8s.io "x": ERR`.
pub fn conflict(name: &str, err: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on {QUALIFIED} {name:?}: {err}"),
        Some(details(name)),
    )
}

/// A failed storage precondition (uid or resourceVersion): `storage.Preconditions.Check`
/// returns `NewInvalidObjError`, whose `StorageError.Error()` text `InterpretDeleteError` and
/// `InterpretUpdateError` wrap in a Conflict.
pub fn precondition_failed(
    namespace: &str,
    name: &str,
    what: &str,
    want: &str,
    have: &str,
) -> ApiError {
    conflict(
        name,
        &format!(
            "StorageError: invalid object, Code: 4, Key: /registry/leases/{namespace}/{name}, \
             ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: {what} in precondition: \
             {want}, {what} in object meta: {have}"
        ),
    )
}

/// One `field.Error`: its path, its `ErrorBody()` text, and its `causes[].reason`.
#[derive(Debug, Clone)]
pub struct FieldError {
    /// `spec.leaseDurationSeconds`.
    pub field: String,
    /// `Invalid value: 0: must be greater than 0`.
    pub body: String,
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: &'static str,
}

impl FieldError {
    /// `field.Invalid(path, value, detail)`; `value` as Go's `%#v`-ish rendering shows it.
    pub fn invalid(field: &str, value: &str, detail: &str) -> FieldError {
        FieldError {
            field: field.to_owned(),
            body: format!("Invalid value: {value}: {detail}"),
            reason: "FieldValueInvalid",
        }
    }

    /// `field.Required(path, detail)`.
    pub fn required(field: &str, detail: &str) -> FieldError {
        FieldError {
            field: field.to_owned(),
            body: if detail.is_empty() {
                "Required value".to_owned()
            } else {
                format!("Required value: {detail}")
            },
            reason: "FieldValueRequired",
        }
    }
}

/// `NewInvalid(qualifiedKind, name, errs)`: 422. `kind` is `Lease` for validation errors and
/// `leases` for the missing resourceVersion of an update (store.go builds that GroupKind from
/// the resource).
pub fn invalid(kind: &str, name: &str, errs: &[FieldError]) -> ApiError {
    let list: Vec<String> = errs
        .iter()
        .map(|e| format!("{}: {}", e.field, e.body))
        .collect();
    let joined = if list.len() == 1 {
        list[0].clone()
    } else {
        format!("[{}]", list.join(", "))
    };
    let causes: Vec<Value> = errs
        .iter()
        .map(|e| json!({ "reason": e.reason, "message": e.body, "field": e.field }))
        .collect();
    ApiError::new(
        422,
        "Invalid",
        format!("{kind}.{GROUP} {name:?} is invalid: {joined}"),
        Some(json!({ "name": name, "group": GROUP, "kind": kind, "causes": causes })),
    )
}

/// `NewBadRequest`: 400, no details.
pub fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "BadRequest", message.into(), None)
}

/// A body the Lease decoder refuses: `transformDecodeError`
/// (`staging/src/k8s.io/apiserver/pkg/endpoints/handlers/rest.go`).
pub fn decode_error(err: &str) -> ApiError {
    bad_request(format!(
        "Lease in version \"v1\" cannot be handled as a Lease: {err}"
    ))
}

/// The authentication filter's 401 for credentials no authenticator accepts
/// (`staging/src/k8s.io/apiserver/pkg/endpoints/filters/authentication.go`, `Unauthorized`).
pub fn unauthorized() -> ApiError {
    ApiError::new(401, "Unauthorized", "Unauthorized".to_owned(), None)
}

/// The authorizer's 403 for `system:anonymous` (`responsewriters.Forbidden`,
/// `forbiddenMessage`).
pub fn forbidden(verb: &str, namespace: Option<&str>, name: &str, path: &str) -> ApiError {
    const USER: &str = "system:anonymous";
    let Some(scope) = namespace.map(|ns| {
        if ns.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace {ns:?}")
        }
    }) else {
        return ApiError::new(
            403,
            "Forbidden",
            format!("forbidden: User {USER:?} cannot {verb} path {path:?}"),
            Some(json!({})),
        );
    };
    let what = if name.is_empty() {
        format!("{QUALIFIED} is forbidden")
    } else {
        format!("{QUALIFIED} {name:?} is forbidden")
    };
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{what}: User {USER:?} cannot {verb} resource {RESOURCE:?} in API group {GROUP:?} {scope}"
        ),
        Some(details(name)),
    )
}

/// `NewResourceExpired`: 410 `Expired`, sent as a watch's ERROR event.
pub fn expired(message: String) -> ApiError {
    ApiError::new(410, "Expired", message, None)
}

/// `NewTooLargeResourceVersionError`: 504 `Timeout`, for a watch from a resourceVersion the
/// server has not reached within 3 s.
pub fn too_large_resource_version(wanted: u64, current: u64) -> ApiError {
    let mut e = ApiError::new(
        504,
        "Timeout",
        format!("Too large resource version: {wanted}, current: {current}"),
        Some(json!({
            "causes": [{
                "reason": "ResourceVersionTooLarge",
                "message": "Too large resource version"
            }],
            "retryAfterSeconds": 1
        })),
    );
    e.code = 504;
    e
}

/// `NewMethodNotSupported`: 405.
pub fn method_not_supported(verb: &str) -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        format!("{verb} is not supported on resources of kind {QUALIFIED:?}"),
        Some(json!({ "group": GROUP, "kind": RESOURCE })),
    )
}

/// `NewUnsupportedMediaType` for a PATCH content type the server does not take: 415.
pub fn unsupported_patch_type(content_type: &str) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json-patch+json, application/merge-patch+json, \
             application/strategic-merge-patch+json, application/apply-patch+yaml \
             (got {content_type:?})"
        ),
        None,
    )
}

/// A 415 for a create or update body that is not JSON.
pub fn unsupported_body_type(content_type: &str) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json, application/yaml, application/vnd.kubernetes.protobuf \
             (this fake takes only JSON; got {content_type:?})"
        ),
        None,
    )
}

/// `Status` `Success` for a delete (`store.go` `Delete` when `ReturnDeletedObject` is false).
pub fn delete_success(name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": { "name": name, "group": GROUP, "kind": RESOURCE, "uid": uid },
    })
}
