//! Reading request bodies: a JSON extractor whose rejections are protocol-shaped errors, and
//! typed field accessors whose errors name the field (`messages[1].content`).
//!
//! Requests are read as `serde_json::Value` and then field by field, rather than derived
//! structs, so that every mistake names its exact path and unknown extra fields (which real
//! clients send freely) are ignored.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde_json::{Map, Value};

use crate::error::{ApiError, Protocol};

/// A JSON request body. Rejections (too large, not JSON, not an object) are [`ApiError`]s in
/// the shape of the route's protocol.
#[derive(Debug)]
pub struct JsonBody(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let protocol = Protocol::of_path(req.uri().path());
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            ApiError::new(
                r.status(),
                format!("cannot read the request body: {}", r.body_text()),
            )
            .with_protocol(protocol)
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                format!("the request body is not valid JSON: {e}"),
            )
            .with_protocol(protocol)
        })?;
        match value {
            Value::Object(map) => Ok(JsonBody(map)),
            other => Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                format!(
                    "the request body must be a JSON object, not {}",
                    type_name(&other)
                ),
            )
            .with_protocol(protocol)),
        }
    }
}

/// The JSON type of a value, for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An object being read, with its path for error messages.
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    pub obj: &'a Map<String, Value>,
    pub path: &'a str,
}

type R<T> = Result<T, ApiError>;

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>, path: &'a str) -> Self {
        Fields { obj, path }
    }

    /// The full path of member `name`.
    pub fn at(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn wrong(&self, name: &str, want: &str, got: &Value) -> ApiError {
        let p = self.at(name);
        ApiError::invalid(&p, format!("`{p}` must be {want}, not {}", type_name(got)))
    }

    /// A member that is present and not null.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    pub fn str(&self, name: &str) -> R<Option<&'a str>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(name, "a string", v)),
        }
    }

    pub fn required_str(&self, name: &str) -> R<&'a str> {
        self.str(name)?.ok_or_else(|| self.missing(name))
    }

    pub fn missing(&self, name: &str) -> ApiError {
        let p = self.at(name);
        ApiError::invalid(&p, format!("`{p}` is required"))
    }

    pub fn bool(&self, name: &str) -> R<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(name, "a boolean", v)),
        }
    }

    pub fn f32(&self, name: &str) -> R<Option<f32>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64().map(|x| x as f32)),
            Some(v) => Err(self.wrong(name, "a number", v)),
        }
    }

    /// A non-negative integer.
    pub fn usize(&self, name: &str) -> R<Option<usize>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(x) => Ok(Some(usize::try_from(x).unwrap_or(usize::MAX))),
                None => {
                    let p = self.at(name);
                    Err(ApiError::invalid(
                        &p,
                        format!("`{p}` must be a non-negative integer, not {n}"),
                    ))
                }
            },
            Some(v) => Err(self.wrong(name, "a non-negative integer", v)),
        }
    }

    /// An integer seed (negative values are taken modulo 2^64, as clients send them).
    pub fn seed(&self, name: &str) -> R<Option<u64>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
                (Some(x), _) => Ok(Some(x)),
                (None, Some(x)) => Ok(Some(x as u64)),
                _ => Err(self.wrong(name, "an integer", &Value::Number(n.clone()))),
            },
            Some(v) => Err(self.wrong(name, "an integer", v)),
        }
    }

    pub fn array(&self, name: &str) -> R<Option<&'a Vec<Value>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong(name, "an array", v)),
        }
    }

    pub fn object(&self, name: &str) -> R<Option<&'a Map<String, Value>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(v) => Err(self.wrong(name, "an object", v)),
        }
    }

    /// A string or an array of strings (`stop`, `stop_sequences`).
    pub fn strings(&self, name: &str) -> R<Vec<String>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => {
                        let p = format!("{}[{i}]", self.at(name));
                        Err(ApiError::invalid(
                            &p,
                            format!("`{p}` must be a string, not {}", type_name(other)),
                        ))
                    }
                })
                .collect(),
            Some(v) => Err(self.wrong(name, "a string or an array of strings", v)),
        }
    }
}

/// An array element as an object, or an error naming it.
pub fn element<'a>(v: &'a Value, path: &str) -> R<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| {
        ApiError::invalid(
            path,
            format!("`{path}` must be an object, not {}", type_name(v)),
        )
    })
}
