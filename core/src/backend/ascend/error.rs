//! AscendCL and DCMI return codes by name (ffi.md A.1 for ACL, HDK return-code table for DCMI).

/// The `ACL_ERROR_*` name of an AscendCL return code, or `ACL_ERROR_UNKNOWN` for a code not in
/// the reference (the numeric code is always reported beside the name).
pub const fn acl_error_name(code: i32) -> &'static str {
    match code {
        0 => "ACL_SUCCESS",
        // ACL layer.
        100000 => "ACL_ERROR_INVALID_PARAM",
        100001 => "ACL_ERROR_UNINITIALIZE",
        100002 => "ACL_ERROR_REPEAT_INITIALIZE",
        100037 => "ACL_ERROR_REPEAT_FINALIZE",
        200000 => "ACL_ERROR_BAD_ALLOC",
        200001 => "ACL_ERROR_API_NOT_SUPPORT",
        200002 => "ACL_ERROR_INVALID_DEVICE",
        200003 => "ACL_ERROR_MEMORY_ADDRESS_UNALIGNED",
        200006 => "ACL_ERROR_FEATURE_UNSUPPORTED",
        500000 => "ACL_ERROR_INTERNAL_ERROR",
        500001 => "ACL_ERROR_FAILURE",
        500003 => "ACL_ERROR_RT_FAILURE",
        500004 => "ACL_ERROR_DRV_FAILURE",
        // Runtime layer.
        107000 => "ACL_ERROR_RT_PARAM_INVALID",
        107001 => "ACL_ERROR_RT_INVALID_DEVICEID",
        107002 => "ACL_ERROR_RT_CONTEXT_NULL",
        107008 => "ACL_ERROR_RT_ADDR_UNALIGNED",
        107017 => "ACL_ERROR_RT_INVALID_HANDLE",
        207000 => "ACL_ERROR_RT_FEATURE_NOT_SUPPORT",
        207001 => "ACL_ERROR_RT_MEMORY_ALLOCATION",
        207002 => "ACL_ERROR_RT_MEMORY_FREE",
        207004 => "ACL_ERROR_RT_NO_DEVICE",
        207006 => "ACL_ERROR_RT_NO_PERMISSION",
        207018 => "ACL_ERROR_RT_DEVICE_OOM",
        507000 => "ACL_ERROR_RT_INTERNAL_ERROR",
        507022 => "ACL_ERROR_RT_IPC_ERROR",
        507053 => "ACL_ERROR_RT_DEVICE_MEM_ERROR",
        507899 => "ACL_ERROR_RT_DRV_INTERNAL_ERROR",
        _ => "ACL_ERROR_UNKNOWN",
    }
}

/// Whether an AscendCL code means the device ran out of memory (torch_npu treats
/// `ACL_ERROR_RT_MEMORY_ALLOCATION` from `aclrtMallocPhysical` as OOM).
pub const fn acl_is_oom(code: i32) -> bool {
    matches!(code, 207001 | 207018 | 200000)
}

/// The `DCMI_ERR_CODE_*` name of a DCMI return code.
pub const fn dcmi_error_name(code: i32) -> &'static str {
    match code {
        0 => "DCMI_OK",
        -8001 => "DCMI_ERR_CODE_INVALID_PARAMETER",
        -8002 => "DCMI_ERR_CODE_OPER_NOT_PERMITTED",
        -8003 => "DCMI_ERR_CODE_MEM_OPERATE_FAIL",
        -8004 => "DCMI_ERR_CODE_SECURE_FUN_FAIL",
        -8005 => "DCMI_ERR_CODE_INNER_ERR",
        -8006 => "DCMI_ERR_CODE_TIME_OUT",
        -8007 => "DCMI_ERR_CODE_INVALID_DEVICE_ID",
        -8008 => "DCMI_ERR_CODE_DEVICE_NOT_EXIST",
        -8009 => "DCMI_ERR_CODE_IOCTL_FAIL",
        -8010 => "DCMI_ERR_CODE_SEND_MSG_FAIL",
        -8011 => "DCMI_ERR_CODE_RECV_MSG_FAIL",
        -8012 => "DCMI_ERR_CODE_NOT_REDAY", // sic, as the vendor spells it
        -8013 => "DCMI_ERR_CODE_NOT_SUPPORT_IN_CONTAINER",
        -8015 => "DCMI_ERR_CODE_RESET_FAIL",
        -8016 => "DCMI_ERR_CODE_ABORT_OPERATE",
        -8017 => "DCMI_ERR_CODE_IS_UPGRADING",
        -8020 => "DCMI_ERR_CODE_RESOURCE_OCCUPIED",
        -8023 => "DCMI_ERR_CODE_CONFIG_INFO_NOT_EXIST",
        -8255 => "DCMI_ERR_CODE_NOT_SUPPORT",
        _ => "DCMI_ERR_CODE_UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_code_has_a_name() {
        let acl = [
            100000, 100001, 100002, 100037, 200000, 200001, 200002, 200003, 200006, 500000, 500001,
            500003, 500004, 107000, 107001, 107002, 107008, 107017, 207000, 207001, 207002, 207004,
            207006, 207018, 507000, 507022, 507053, 507899,
        ];
        for c in acl {
            assert_ne!(acl_error_name(c), "ACL_ERROR_UNKNOWN", "{c}");
        }
        assert_eq!(acl_error_name(107008), "ACL_ERROR_RT_ADDR_UNALIGNED");
        assert_eq!(acl_error_name(42), "ACL_ERROR_UNKNOWN");
        assert!(acl_is_oom(207001));
        for c in [
            -8001, -8002, -8005, -8006, -8007, -8008, -8012, -8013, -8020, -8255,
        ] {
            assert_ne!(dcmi_error_name(c), "DCMI_ERR_CODE_UNKNOWN", "{c}");
        }
    }
}
