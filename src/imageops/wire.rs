//! The messages of the original imageops HTTP API (EdgeGallery's imageops: `POST
//! /api/v1/vmimage/check` and `/compress` start a request, `GET .../{requestId}` polls it), as
//! types shared by its client (`remote.rs`) and its server (`routes::sidecar`, `file-system
//! imageops`). Statuses are the numbers of `entity::status`; the client reads the texts of
//! an answer leniently (a number where a text was expected is taken as its text), as the
//! original sidecar is not ours.

use serde::{Deserialize, Deserializer, Serialize};

/// The paths of the API, under the sidecar's base address.
pub const CHECK_PATH: &str = "/api/v1/vmimage/check";
pub const COMPRESS_PATH: &str = "/api/v1/vmimage/compress";

/// `POST /api/v1/vmimage/check`: the image to check, relative to the shared directory.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckRequest {
    pub input_image_name: String,
}

/// `POST /api/v1/vmimage/compress`: input and output, relative to the shared directory.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompressRequest {
    pub input_image_name: String,
    pub output_image_name: String,
}

/// `status` of a [`Started`] that was accepted (the original imageops answers 0; a refusal
/// is `CheckStatus::Failed`, 3).
pub const ACCEPTED: i32 = 0;

/// The answer to a request that starts work (its `requestId`), or refuses it (`status` 3 and
/// why, without an id).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    #[serde(default)]
    pub status: i32,
    #[serde(default, deserialize_with = "text")]
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `GET /api/v1/vmimage/check/{requestId}`: the check's status (`CheckStatus`) and, once it
/// ended, what it found.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckAnswer {
    pub status: i32,
    #[serde(default, deserialize_with = "text")]
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_info: Option<CheckInfo>,
}

/// What a finished check found.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckInfo {
    /// MD5 of the file, hex.
    #[serde(default, deserialize_with = "text")]
    pub checksum: String,
    /// `qemu-img check`'s result (`entity::check::result`).
    #[serde(default)]
    pub check_result: Option<i32>,
    #[serde(default)]
    pub image_info: ImageInfo,
}

/// `qemu-img info` and `check` figures of a checked image, under the original's names.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ImageInfo {
    #[serde(rename = "image-end-offset", default, deserialize_with = "text")]
    pub image_end_offset: String,
    #[serde(rename = "check-errors", default, deserialize_with = "text")]
    pub check_errors: String,
    #[serde(default, deserialize_with = "text")]
    pub format: String,
    #[serde(default, deserialize_with = "text")]
    pub filename: String,
    /// GiB.
    #[serde(default)]
    pub virtual_size: Option<f64>,
    /// Bytes, as a decimal text.
    #[serde(default, deserialize_with = "text")]
    pub disk_size: String,
}

/// `GET /api/v1/vmimage/compress/{requestId}`: the compression's status (`CompressStatus`),
/// its message and progress (0.0 to 1.0).
#[derive(Debug, Serialize, Deserialize)]
pub struct CompressAnswer {
    pub status: i32,
    #[serde(default, deserialize_with = "text")]
    pub msg: String,
    #[serde(default)]
    pub rate: Option<f64>,
}

/// A text field read leniently: a string as it is, `null` as empty, anything else (a number,
/// say) as its JSON text.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_leniently() {
        let a: CheckAnswer = serde_json::from_str(
            r#"{"status":1,"msg":null,"checkInfo":{"checksum":"ab","checkResult":0,
                "imageInfo":{"image-end-offset":393216,"check-errors":0,"format":"qcow2",
                "filename":"a.qcow2","virtual_size":1.5,"disk_size":"1024"}}}"#,
        )
        .unwrap();
        assert_eq!(a.msg, "");
        let info = a.check_info.unwrap();
        assert_eq!(info.image_info.image_end_offset, "393216");
        assert_eq!(info.image_info.check_errors, "0");
        assert_eq!(info.image_info.virtual_size, Some(1.5));
        let c: CompressAnswer = serde_json::from_str(r#"{"status":0,"msg":"x"}"#).unwrap();
        assert_eq!(c.rate, None);
        let s: Started = serde_json::from_str(r#"{"status":3,"msg":"bad"}"#).unwrap();
        assert_eq!(s.request_id, None);
    }

    #[test]
    fn requests_use_the_original_names() {
        let r = CompressRequest {
            input_image_name: "a".into(),
            output_image_name: "b".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"inputImageName":"a","outputImageName":"b"}"#
        );
    }
}
