package agent

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshca/meshca/sds/envoy"
)

// TestAgentSDSSPIFFEValidator: Config.SDSSPIFFEValidator reaches the SDS
// server: with it, ROOTCA is a SPIFFE validator config and ALL is served;
// without it, ROOTCA is a trusted CA and ALL is not served.
func TestAgentSDSSPIFFEValidator(t *testing.T) {
	f := newCAFixture(t)

	tests := []struct {
		name      string
		validator bool
		want      int // resources served for ROOTCA and ALL
	}{
		{name: "default", validator: false, want: 1},
		{name: "--sds-spiffe-validator", validator: true, want: 2},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := filepath.Join(f.dir, "s", strconv.Itoa(i)+".sock")
			cfg := f.agentConfig()
			cfg.SDSSocket, cfg.SDSSPIFFEValidator = sock, tt.validator
			a, err := Start(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Stop()
			conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// A stream, as Envoy opens it: answered once the first SVID,
			// which arrives in the background, is published.
			st, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{envoy.RootCAName, envoy.AllName}}); err != nil {
				t.Fatal(err)
			}
			resp, err := st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.GetResources()) != tt.want {
				t.Fatalf("%d resources served, want %d", len(resp.GetResources()), tt.want)
			}
			for _, r := range resp.GetResources() {
				var sec tlsv3.Secret
				if err := r.UnmarshalTo(&sec); err != nil {
					t.Fatal(err)
				}
				if err := sec.ValidateAll(); err != nil {
					t.Errorf("%s: %v", sec.GetName(), err)
				}
				vc := sec.GetValidationContext()
				if got := vc.GetCustomValidatorConfig().GetName() == envoy.SPIFFEValidatorName; got != tt.validator {
					t.Errorf("%s: SPIFFE validator %v, want %v", sec.GetName(), got, tt.validator)
				}
				if got := vc.GetTrustedCa() != nil; got == tt.validator {
					t.Errorf("%s: trusted_ca set %v with the validator %v", sec.GetName(), got, tt.validator)
				}
			}
		})
	}
}
