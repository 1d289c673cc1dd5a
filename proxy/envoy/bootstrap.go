package envoy

import (
	"encoding/json"
	"fmt"
	"time"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	overload "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	downstreamconns "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// NodeID is the xDS node id Envoy announces and the snapshot is kept under.
const NodeID = "membrane"

// xdsCluster is the bootstrap's static cluster pointing at membraned.
const xdsCluster = "membrane_xds"

// Bootstrap is Envoy's bootstrap config (JSON): node, admin on a unix
// socket, ADS for listeners and clusters from membraned over xdsSocket,
// and, when maxConnections > 0, a bound on the downstream connections held
// open at once (Envoy refuses those beyond it).
func Bootstrap(xdsSocket, adminSocket string, maxConnections int) ([]byte, error) {
	po, err := anypb.New(&upstreamhttp.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &core.Http2ProtocolOptions{},
				},
			},
		},
	})
	if err != nil {
		return nil, err
	}
	pipe := func(path string, mode uint32) *core.Address {
		return &core.Address{Address: &core.Address_Pipe{Pipe: &core.Pipe{Path: path, Mode: mode}}}
	}
	ads := &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
	// Policy regexps may be larger than Envoy's default RE2 program size
	// limit; they are the operator's, validated by membraned already.
	rt, err := structpb.NewStruct(map[string]any{
		"re2.max_program_size.error_level": float64(100000),
		"re2.max_program_size.warn_level":  float64(10000),
	})
	if err != nil {
		return nil, err
	}
	b := &bootstrap.Bootstrap{
		Node:  &core.Node{Id: NodeID, Cluster: NodeID},
		Admin: &bootstrap.Admin{Address: pipe(adminSocket, 0o600)},
		DynamicResources: &bootstrap.Bootstrap_DynamicResources{
			AdsConfig: &core.ApiConfigSource{
				ApiType:                   core.ApiConfigSource_GRPC,
				TransportApiVersion:       core.ApiVersion_V3,
				SetNodeOnFirstMessageOnly: true,
				GrpcServices: []*core.GrpcService{{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: xdsCluster},
				}}},
			},
			LdsConfig: ads,
			CdsConfig: ads,
		},
		StaticResources: &bootstrap.Bootstrap_StaticResources{Clusters: []*cluster.Cluster{{
			Name:                 xdsCluster,
			ConnectTimeout:       durationpb.New(time.Second),
			ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
			TypedExtensionProtocolOptions: map[string]*anypb.Any{
				"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": po,
			},
			LoadAssignment: &endpoint.ClusterLoadAssignment{
				ClusterName: xdsCluster,
				Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
					HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: pipe(xdsSocket, 0)}},
				}}}},
			},
		}}},
		LayeredRuntime: &bootstrap.LayeredRuntime{Layers: []*bootstrap.RuntimeLayer{{
			Name:           "membrane",
			LayerSpecifier: &bootstrap.RuntimeLayer_StaticLayer{StaticLayer: rt},
		}}},
	}
	if maxConnections > 0 {
		mc, err := anypb.New(&downstreamconns.DownstreamConnectionsConfig{MaxActiveDownstreamConnections: int64(maxConnections)})
		if err != nil {
			return nil, err
		}
		b.OverloadManager = &overload.OverloadManager{ResourceMonitors: []*overload.ResourceMonitor{{
			Name:       "envoy.resource_monitors.global_downstream_max_connections",
			ConfigType: &overload.ResourceMonitor_TypedConfig{TypedConfig: mc},
		}}}
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("envoy bootstrap: %w", err)
	}
	return marshalStable(b)
}

// marshalStable is protojson with deterministic whitespace (protojson
// randomizes it on purpose), for files on disk and golden tests.
func marshalStable(m proto.Message) ([]byte, error) {
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}
