package envoy

import _ "embed"

// UnitFile is membrane-envoy.service, the systemd unit the packages ship for
// Config.Unit (Envoy run by systemd rather than supervised by membraned).
//
//go:embed membrane-envoy.service
var UnitFile string

// UnitName is the unit's name.
const UnitName = "membrane-envoy.service"
