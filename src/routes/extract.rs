//! Request fields from multipart bodies, url-encoded bodies and the query string, with every
//! rejection in the service's JSON error shape.

use super::error::ApiError;
use crate::domain::{
    self,
    form::{Fields, FormPart, FormSource, NoParts},
};
use async_trait::async_trait;
use axum::{
    extract::{FromRequest, Request},
    http::header::CONTENT_TYPE,
};
use futures::{StreamExt, TryStreamExt};
use std::io;

/// Largest text field or url-encoded body accepted.
const TEXT_LIMIT: usize = 64 * 1024;

pub fn parse_query(q: Option<&str>) -> Result<Fields, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    Ok(Fields::from_pairs(pairs))
}

/// Parts of a `multipart/form-data` body, read as they arrive.
pub struct MultipartParts(multer::Multipart<'static>);

fn bad_multipart(e: multer::Error) -> domain::Error {
    domain::Error::BadBody(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed multipart body: {e}"),
    ))
}

#[async_trait]
impl FormSource for MultipartParts {
    async fn next_part(&mut self) -> domain::Result<Option<FormPart>> {
        let Some(mut field) = self.0.next_field().await.map_err(bad_multipart)? else {
            return Ok(None);
        };
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_string);
        if file_name.is_some() || name == "file" || name == "part" {
            let body = field
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("malformed multipart body: {e}"),
                    )
                })
                .boxed();
            return Ok(Some(FormPart::File {
                name,
                file_name,
                body,
            }));
        }
        let mut value = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad_multipart)? {
            if value.len() + chunk.len() > TEXT_LIMIT {
                return Err(domain::Error::InvalidInput(format!(
                    "field {name:?} is longer than {TEXT_LIMIT} bytes"
                )));
            }
            value.extend_from_slice(&chunk);
        }
        let value = String::from_utf8(value)
            .map_err(|_| domain::Error::InvalidInput(format!("field {name:?} is not UTF-8")))?;
        Ok(Some(FormPart::Text { name, value }))
    }
}

/// A request's fields: query parameters plus the body's fields and file parts.
pub struct Form {
    /// Query parameters, overlaid with url-encoded body fields (which win).
    pub fields: Fields,
    pub parts: Box<dyn FormSource>,
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let mut fields = parse_query(req.uri().query())?;
        let ct = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let parts: Box<dyn FormSource> = match mime.as_str() {
            "multipart/form-data" => {
                let boundary = multer::parse_boundary(&ct).map_err(|e| {
                    ApiError::new(
                        axum::http::StatusCode::BAD_REQUEST,
                        "BAD_BODY",
                        format!("malformed multipart body: {e}"),
                    )
                })?;
                Box::new(MultipartParts(multer::Multipart::new(
                    req.into_body().into_data_stream(),
                    boundary,
                )))
            }
            "application/x-www-form-urlencoded" => {
                let bytes = axum::body::to_bytes(req.into_body(), TEXT_LIMIT)
                    .await
                    .map_err(|e| {
                        ApiError::bad_request(format!(
                            "form body unreadable or over {TEXT_LIMIT} bytes: {e}"
                        ))
                    })?;
                let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
                    .map_err(|e| ApiError::bad_request(format!("malformed form body: {e}")))?;
                fields.overlay(Fields::from_pairs(pairs));
                Box::new(NoParts)
            }
            _ => Box::new(NoParts),
        };
        Ok(Form { fields, parts })
    }
}

/// Text fields only (merge, cancel, delete): file parts are read past and ignored.
pub struct FormFields(pub Fields);

impl<S: Send + Sync> FromRequest<S> for FormFields {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Form {
            mut fields,
            mut parts,
        } = Form::from_request(req, state).await?;
        let mut body = Fields::default();
        while let Some(part) = parts.next_part().await? {
            match part {
                FormPart::Text { name, value } => body.set(name, value),
                FormPart::File { mut body, .. } => {
                    while let Some(chunk) = body.next().await {
                        chunk.map_err(domain::Error::BadBody)?;
                    }
                }
            }
        }
        fields.overlay(body);
        Ok(FormFields(fields))
    }
}
