//! Proto messages to domain values (validating every field once) and back.

use heft_proto::users::v1 as pb;
use heft_service::{
    InvalidRequest, Violations,
    error::checked,
    field_mask::{self, UpdateFields},
    time::to_timestamp,
    user_token::TokenPublicKey,
};

use crate::domain::{
    DEFAULT_WEIGHT_UNIT, Email, Password, PurgeRecord, PurgeState, User, UserChange,
    UserChangeKind, UserId, UserName, UserPatch, WeightUnit,
};

pub struct NewAccount {
    pub email: Email,
    pub name: UserName,
    pub password: Password,
    pub weight_unit: WeightUnit,
}

pub struct PasswordChange {
    pub id: UserId,
    pub current: Password,
    pub new: Password,
}

pub struct Login {
    pub email: Email,
    pub password: Password,
}

pub fn user_id(raw: &str, field: &str) -> Result<UserId, InvalidRequest> {
    UserId::parse(raw).map_err(|e| InvalidRequest::single(field, e.to_string()))
}

/// `UNSPECIFIED` is `None`; unknown numbers are invalid.
fn weight_unit(code: i32) -> Result<Option<WeightUnit>, &'static str> {
    match code {
        0 => Ok(None),
        code => WeightUnit::from_code(code)
            .map(Some)
            .ok_or("must be WEIGHT_UNIT_KILOGRAMS or WEIGHT_UNIT_POUNDS"),
    }
}

pub fn create_user(request: pb::CreateUserRequest) -> Result<NewAccount, InvalidRequest> {
    let mut violations = Violations::new();
    let email = violations.check("email", Email::parse(&request.email));
    let name = violations.check("name", UserName::parse(&request.name));
    let password = violations.check("password", Password::parse(&request.password));
    let weight_unit = violations.check("weight_unit", weight_unit(request.weight_unit));
    violations.into_result()?;
    Ok(NewAccount {
        email: checked(email),
        name: checked(name),
        password: checked(password),
        weight_unit: checked(weight_unit).unwrap_or(DEFAULT_WEIGHT_UNIT),
    })
}

pub fn update_user(request: pb::UpdateUserRequest) -> Result<(UserId, UserPatch), InvalidRequest> {
    let Some(user) = request.user else {
        return Err(InvalidRequest::single("user", "is required"));
    };
    let mut violations = Violations::new();
    let id = violations.check("user.id", UserId::parse(&user.id));
    let fields = violations
        .merge(field_mask::resolve(
            request.update_mask.as_ref(),
            &["name", "email", "weight_unit"],
            &["id", "create_time", "update_time"],
        ))
        .unwrap_or(UpdateFields::Named(Vec::new()));
    let mut patch = UserPatch::default();
    if fields.includes("email", !user.email.is_empty()) {
        patch.email = violations.check("user.email", Email::parse(&user.email));
    }
    if fields.includes("name", !user.name.is_empty()) {
        patch.name = violations.check("user.name", UserName::parse(&user.name));
    }
    if fields.includes("weight_unit", user.weight_unit != 0) {
        patch.weight_unit = violations.check(
            "user.weight_unit",
            weight_unit(user.weight_unit)
                .and_then(|unit| unit.ok_or("must be WEIGHT_UNIT_KILOGRAMS or WEIGHT_UNIT_POUNDS")),
        );
    }
    violations.into_result()?;
    Ok((checked(id), patch))
}

pub fn change_password(
    request: pb::ChangePasswordRequest,
) -> Result<PasswordChange, InvalidRequest> {
    let mut violations = Violations::new();
    let id = violations.check("id", UserId::parse(&request.id));
    let current = violations.check(
        "current_password",
        Password::for_login(&request.current_password),
    );
    let new = violations.check("new_password", Password::parse(&request.new_password));
    violations.into_result()?;
    Ok(PasswordChange {
        id: checked(id),
        current: checked(current),
        new: checked(new),
    })
}

pub fn authenticate(request: pb::AuthenticateRequest) -> Result<Login, InvalidRequest> {
    let mut violations = Violations::new();
    let email = violations.check("email", Email::parse(&request.email));
    let password = violations.check("password", Password::for_login(&request.password));
    violations.into_result()?;
    Ok(Login {
        email: checked(email),
        password: checked(password),
    })
}

pub fn user_to_proto(user: &User) -> pb::User {
    pb::User {
        id: user.id.to_string(),
        email: user.email.as_str().to_owned(),
        name: user.name.as_str().to_owned(),
        weight_unit: user.weight_unit.code(),
        create_time: Some(to_timestamp(user.create_time)),
        update_time: Some(to_timestamp(user.update_time)),
    }
}

pub fn user_change_to_proto(change: &UserChange) -> pb::UserChange {
    let (change_type, user_id, user) = match &change.kind {
        UserChangeKind::Created(user) => (pb::UserChangeType::Created, user.id, Some(user)),
        UserChangeKind::Updated(user) => (pb::UserChangeType::Updated, user.id, Some(user)),
        UserChangeKind::Deleted(id) => (pb::UserChangeType::Deleted, *id, None),
    };
    pb::UserChange {
        change_type: change_type as i32,
        user_id: user_id.to_string(),
        user: user.map(user_to_proto),
        change_time: Some(to_timestamp(change.time)),
    }
}

/// The optional state filter of ListPurgeJobs: `UNSPECIFIED` is every state.
pub fn purge_state_filter(code: i32) -> Result<Option<PurgeState>, InvalidRequest> {
    match pb::PurgeState::try_from(code) {
        Ok(pb::PurgeState::Unspecified) => Ok(None),
        Ok(pb::PurgeState::Pending) => Ok(Some(PurgeState::Pending)),
        Ok(pb::PurgeState::Purged) => Ok(Some(PurgeState::Purged)),
        Err(_) => Err(InvalidRequest::single(
            "state",
            "must be PURGE_STATE_PENDING, PURGE_STATE_PURGED or unspecified",
        )),
    }
}

pub fn purge_state_to_proto(state: PurgeState) -> pb::PurgeState {
    match state {
        PurgeState::Pending => pb::PurgeState::Pending,
        PurgeState::Purged => pb::PurgeState::Purged,
    }
}

pub fn purge_record_to_proto(record: &PurgeRecord) -> pb::PurgeJob {
    pb::PurgeJob {
        user_id: record.user_id.to_string(),
        state: purge_state_to_proto(record.state).into(),
        attempts: record.attempts,
        last_error: record.last_error.clone().unwrap_or_default(),
        purged_entry_count: record.purged_entry_count.unwrap_or(0),
        create_time: Some(to_timestamp(record.create_time)),
        complete_time: record.complete_time.map(to_timestamp),
        next_attempt_time: record.next_attempt_time.map(to_timestamp),
    }
}

pub fn token_key_to_proto(key: &TokenPublicKey) -> pb::TokenKey {
    pb::TokenKey {
        kid: key.kid.clone(),
        kty: "OKP".to_owned(),
        crv: "Ed25519".to_owned(),
        x: key.x_base64url(),
        r#use: "sig".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use heft_test_support::status::assert_fits_its_limit;

    use super::*;
    use crate::domain::{Email, Password, UserName};

    /// Every text field at its longest, four bytes per character.
    fn longest(chars: usize) -> String {
        "𝔁".repeat(chars)
    }

    fn id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    #[test]
    fn the_largest_valid_requests_fit_their_limits() {
        assert_fits_its_limit(&pb::CreateUserRequest {
            email: longest(Email::MAX_CHARS),
            name: longest(UserName::MAX_CHARS),
            password: longest(Password::MAX_CHARS),
            weight_unit: i32::MAX,
        });
        let timestamp = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: i32::MAX,
        };
        assert_fits_its_limit(&pb::UpdateUserRequest {
            user: Some(pb::User {
                id: id(),
                email: longest(Email::MAX_CHARS),
                name: longest(UserName::MAX_CHARS),
                weight_unit: i32::MAX,
                create_time: Some(timestamp),
                update_time: Some(timestamp),
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![
                    "x".repeat(heft_proto::codec::MAX_MASK_PATH_BYTES);
                    heft_proto::codec::MAX_MASK_PATHS
                ],
            }),
        });
        assert_fits_its_limit(&pb::ChangePasswordRequest {
            id: id(),
            current_password: longest(Password::MAX_CHARS),
            new_password: longest(Password::MAX_CHARS),
        });
        assert_fits_its_limit(&pb::AuthenticateRequest {
            email: longest(Email::MAX_CHARS),
            password: longest(Password::MAX_CHARS),
        });
        let page_token = "x".repeat(heft_service::pagination::MAX_TOKEN_LEN);
        assert_fits_its_limit(&pb::ListUsersRequest {
            page_size: i32::MIN,
            page_token: page_token.clone(),
        });
        assert_fits_its_limit(&pb::ListUserChangesRequest {
            change_token: page_token.clone(),
            page_size: i32::MIN,
        });
        assert_fits_its_limit(&pb::ListPurgeJobsRequest {
            state: i32::MIN,
            page_size: i32::MIN,
            page_token,
        });
        assert_fits_its_limit(&pb::GetUserRequest { id: id() });
        assert_fits_its_limit(&pb::DeleteUserRequest { id: id() });
        assert_fits_its_limit(&pb::GetPurgeJobRequest { user_id: id() });
    }
}
