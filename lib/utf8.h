/* SPDX-License-Identifier: MIT */
/*
 * Strict UTF-8 validation (RFC 3629): no overlong forms, no surrogates, nothing past U+10FFFF.
 * MQTT strings additionally forbid U+0000; JSON payloads may carry it.
 */
#pragma once

#include "buf.h"

bool utf8_valid(View s, bool allow_nul);
