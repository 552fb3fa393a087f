//! Update masks (Google AIP-134).

use heft_proto::codec::{MAX_MASK_PATH_BYTES, MAX_MASK_PATHS};
use prost_types::FieldMask;

use crate::error::{InvalidRequest, Violations};

/// The fields an Update call changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateFields {
    /// No mask: change the fields the request populated.
    Populated,
    /// These mutable fields, as named by the mask (`*` names all of them).
    Named(Vec<&'static str>),
}

impl UpdateFields {
    /// Whether `field` is to be changed, given whether the request populated it.
    pub fn includes(&self, field: &str, populated: bool) -> bool {
        match self {
            UpdateFields::Populated => populated,
            UpdateFields::Named(fields) => fields.contains(&field),
        }
    }
}

/// Checks `mask` against the resource's `mutable` and `immutable` fields;
/// every unknown or immutable path is named in one `BadRequest`.
pub fn resolve(
    mask: Option<&FieldMask>,
    mutable: &[&'static str],
    immutable: &[&str],
) -> Result<UpdateFields, InvalidRequest> {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() {
        return Ok(UpdateFields::Populated);
    }
    // The codec refuses longer masks on the wire; this guards calls that
    // did not come through it, and keeps every echoed path short.
    if paths.len() > MAX_MASK_PATHS {
        return Err(InvalidRequest::single(
            "update_mask",
            format!("at most {MAX_MASK_PATHS} paths"),
        ));
    }
    if paths.iter().any(|path| path.len() > MAX_MASK_PATH_BYTES) {
        return Err(InvalidRequest::single(
            "update_mask",
            format!("paths are at most {MAX_MASK_PATH_BYTES} bytes"),
        ));
    }
    if paths.len() == 1 && paths[0] == "*" {
        return Ok(UpdateFields::Named(mutable.to_vec()));
    }
    let mut violations = Violations::new();
    let mut named = Vec::new();
    for path in paths {
        if let Some(field) = mutable.iter().find(|f| **f == path.as_str()) {
            if !named.contains(field) {
                named.push(*field);
            }
        } else if immutable.contains(&path.as_str()) {
            violations.add("update_mask", format!("field `{path}` cannot be changed"));
        } else {
            violations.add(
                "update_mask",
                format!(
                    "unknown field `{path}`; mutable fields are: {}",
                    mutable.join(", ")
                ),
            );
        }
    }
    violations.into_result()?;
    Ok(UpdateFields::Named(named))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(paths: &[&str]) -> FieldMask {
        FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn resolves_named_star_and_absent_masks() {
        let mutable = &["name", "email"];
        assert_eq!(
            resolve(None, mutable, &[]).expect("ok"),
            UpdateFields::Populated
        );
        assert_eq!(
            resolve(Some(&mask(&["email"])), mutable, &[]).expect("ok"),
            UpdateFields::Named(vec!["email"])
        );
        assert_eq!(
            resolve(Some(&mask(&["*"])), mutable, &[]).expect("ok"),
            UpdateFields::Named(vec!["name", "email"])
        );
    }

    #[test]
    fn names_every_unknown_and_immutable_path() {
        let error = resolve(
            Some(&mask(&["id", "name", "shoe_size"])),
            &["name"],
            &["id"],
        )
        .expect_err("invalid");
        assert_eq!(error.0.len(), 2);
        assert!(error.0.iter().all(|v| v.field == "update_mask"));
    }
}
